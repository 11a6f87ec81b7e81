//! Configuration: the TOML file of SPEC.md, read once into a validated
//! [`Config`].
//!
//! Parsing happens in two steps, so that nothing downstream ever sees an
//! unchecked value: serde reads the file into `Raw*` structs that mirror the
//! TOML exactly (unknown keys are an error), then [`Config::load`] checks
//! every value and resolves relative paths against the configuration file's
//! folder. Every error names the file, the key and what was expected.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::domain::{DomainName, normalize_domain};

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/legal-intake/config.toml";

/// A configuration problem: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The dotted key (`imap.port`), or empty when the whole file is at fault.
    pub key: String,
    /// What was wrong and what was expected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// How a connection to a mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS before authentication.
    Starttls,
    /// No TLS at all; accepted only for a loopback host.
    None,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub path: PathBuf,
    pub imap: Imap,
    pub smtp: Option<Smtp>,
    pub dkim_signing: Option<DkimSigning>,
    pub dns: Dns,
    pub auth: Auth,
    pub notify: Option<Notify>,
    pub store: Store,
    pub limits: Limits,
    pub reminders: Reminders,
    pub triage: Triage,
    /// The Prometheus endpoint of `run`; `None` without a `[metrics]`
    /// section.
    pub metrics: Option<Metrics>,
    /// The case board of `serve`; `None` without a `[web]` section.
    pub web: Option<Web>,
    /// The allowlist of agencies with jurisdiction in Gibraltar.
    pub agencies: Vec<Agency>,
}

#[derive(Debug, Clone)]
pub struct Imap {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    /// File holding the IMAP password (a systemd credential).
    pub password_file: Option<PathBuf>,
    /// File holding an OAuth 2 access token, used with XOAUTH2 instead of a
    /// password; re-read at every login because an external helper renews it.
    pub access_token_file: Option<PathBuf>,
    /// PEM bundle of extra certificate authorities to trust (a private CA).
    pub ca_file: Option<PathBuf>,
    pub mailbox: String,
    pub processed_mailbox: String,
    pub quarantine_mailbox: String,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// The `From:` of every reply, as written in the configuration.
    pub from: String,
    /// The envelope sender of replies; `None` is the empty path `<>`
    /// (RFC 3834 §3.3), which some submission servers refuse.
    pub envelope_from: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DkimSigning {
    pub domain: String,
    pub selector: String,
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dns {
    /// Empty: the system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Auth {
    /// Host names whose `Received` line is the evidence for SPF.
    pub trusted_mx: Vec<DomainName>,
    /// Relays between the MX and the store whose hops are passed over.
    pub internal_networks: Vec<IpNet>,
    /// At most this many DKIM signatures are examined per message.
    pub max_signatures: usize,
    /// Total time allowed for all DNS-backed checks of one message.
    pub time_budget: Duration,
    /// The company's own domains: authenticated mail from them (a
    /// colleague's Cc, a forward from support) is an internal note, never
    /// answered.
    pub own_domains: Vec<DomainName>,
}

#[derive(Debug, Clone)]
pub struct Notify {
    pub to: Vec<String>,
    pub digest_hour: u8,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub database: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub defer_max_tries: u32,
    /// At most this many replies to one sender address per day.
    pub replies_per_sender_per_day: u32,
}

/// What the board and the daily digest remind the legal team of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminders {
    /// Days after a verified request was opened by which its duplicate
    /// hard copy should have been served in person.
    pub hard_copy_days: u32,
}

#[derive(Debug, Clone)]
pub struct Triage {
    /// Regular-expression-free patterns for IVPN account IDs, where `X` is
    /// any letter or digit and every other character stands for itself.
    pub account_patterns: Vec<String>,
}

/// The daemon's Prometheus endpoint (`GET /metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// The address and port the endpoint listens on.
    pub listen: SocketAddr,
    /// Whether `listen` may be other than a loopback address. The figures
    /// show how many legal requests arrive, how they were judged and how
    /// many cases are open and due, which is confidential in itself, so
    /// serving them beyond the machine has to be asked for explicitly.
    pub allow_remote: bool,
}

/// The case board (`serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Web {
    /// The address and port the board listens on (plain HTTP: TLS is the
    /// reverse proxy's).
    pub listen: SocketAddr,
    /// Whether `listen` may be other than a loopback address.
    pub allow_remote: bool,
    /// How long a session lasts after signing in, in hours.
    pub session_hours: u32,
}

#[derive(Debug, Clone)]
pub struct Agency {
    pub name: String,
    /// Normalised (lowercase, IDNA A-label) domains; each also covers its
    /// subdomains.
    pub domains: Vec<DomainName>,
}

// ---- The raw TOML, exactly as written -------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    imap: Option<RawImap>,
    smtp: Option<RawSmtp>,
    dkim_signing: Option<RawDkimSigning>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    auth: RawAuth,
    notify: Option<RawNotify>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    reminders: RawReminders,
    #[serde(default)]
    triage: RawTriage,
    metrics: Option<RawMetrics>,
    web: Option<RawWeb>,
    #[serde(default)]
    agency: Vec<RawAgency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImap {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<Tls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    access_token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    mailbox: Option<String>,
    processed_mailbox: Option<String>,
    quarantine_mailbox: Option<String>,
    poll_interval_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<Tls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    from: Option<String>,
    envelope_from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkimSigning {
    domain: Option<String>,
    selector: Option<String>,
    private_key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    trusted_mx: Vec<String>,
    #[serde(default)]
    internal_networks: Vec<String>,
    max_signatures: Option<usize>,
    time_budget_secs: Option<u64>,
    #[serde(default)]
    own_domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    to: Vec<String>,
    digest_hour: Option<u8>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    database: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<usize>,
    defer_max_tries: Option<u32>,
    replies_per_sender_per_day: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTriage {
    account_patterns: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    allow_remote: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReminders {
    hard_copy_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<String>,
    allow_remote: Option<bool>,
    session_hours: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    name: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
}

/// The default IVPN account ID patterns (`i-XXXX-XXXX-XXXX` and the legacy
/// `ivpnXXXXXXXX`).
pub const DEFAULT_ACCOUNT_PATTERNS: [&str; 2] = ["i-XXXX-XXXX-XXXX", "ivpnXXXXXXXX"];

impl Config {
    /// The `notify.to` addresses with repeats (in any case) left out;
    /// empty without `[notify]`.
    pub fn notify_recipients(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for to in self.notify.iter().flat_map(|n| &n.to) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(to)) {
                out.push(to.clone());
            }
        }
        out
    }

    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validates configuration text as if read from `path` (which anchors
    /// relative paths and names the file in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Validator { path }.config(raw)
    }

    /// A one-line summary for `check-config`.
    pub fn summary(&self) -> String {
        let domains: usize = self.agencies.iter().map(|a| a.domains.len()).sum();
        format!(
            "{}: ok: imap {}:{} ({}), smtp {}, {} agencies ({} domains), database {}",
            self.path.display(),
            self.imap.host,
            self.imap.port,
            self.imap.mailbox,
            self.smtp.as_ref().map_or_else(
                || "not configured".to_string(),
                |s| format!("{}:{}", s.host, s.port)
            ),
            self.agencies.len(),
            domains,
            self.store.database.display()
        ) + &self.metrics.as_ref().map_or_else(String::new, |m| {
            format!(", metrics http://{}/metrics", m.listen)
        }) + &self
            .web
            .as_ref()
            .map_or_else(String::new, |w| format!(", board http://{}/", w.listen))
    }
}

/// Turns a TOML/serde error into file + key + reason. toml reports a byte
/// span; the key is recovered from the text at that span and the table
/// header above it, which is what a person editing the file needs.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let reason = err.message().trim_end_matches('.').to_string();
    let mut key = String::new();
    if let Some(span) = err.span() {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[line_start..line_end].trim();
        let table = text[..line_end]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        let name = if line.starts_with('[') {
            None
        } else {
            line.split('=')
                .next()
                .map(|k| k.trim().trim_matches('"').to_string())
        };
        key = match (table, name) {
            (Some(t), Some(n)) if !n.is_empty() => format!("{t}.{n}"),
            (None, Some(n)) => n,
            (Some(t), _) => t,
            (None, None) => String::new(),
        };
        let line_no = text[..start].matches('\n').count() + 1;
        return ConfigError {
            file: path.to_path_buf(),
            key,
            reason: format!("{reason} (line {line_no})"),
        };
    }
    ConfigError {
        file: path.to_path_buf(),
        key,
        reason,
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A path in the configuration is relative to the configuration file's
    /// folder, so that a test or a package can ship a self-contained folder.
    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn required<T>(&self, key: &str, v: Option<T>) -> Result<T, ConfigError> {
        v.ok_or_else(|| self.err(key, "is required"))
    }

    fn non_empty(&self, key: &str, v: Option<String>) -> Result<String, ConfigError> {
        let v = self.required(key, v)?;
        if v.trim().is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(v)
    }

    fn host(&self, key: &str, v: Option<String>) -> Result<String, ConfigError> {
        let host = self.non_empty(key, v)?;
        if host.parse::<IpAddr>().is_err() && normalize_domain(&host).is_none() {
            return Err(self.err(key, format!("`{host}` is not a host name or IP address")));
        }
        Ok(host)
    }

    fn tls(&self, section: &str, host: &str, tls: Tls) -> Result<(), ConfigError> {
        if tls == Tls::None && !is_loopback(host) {
            return Err(self.err(
                format!("{section}.tls"),
                format!(
                    "`none` is allowed only for a loopback host, not `{host}`; use `implicit` or `starttls`"
                ),
            ));
        }
        Ok(())
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let imap = self.imap(self.required("imap", raw.imap)?)?;
        let smtp = raw.smtp.map(|s| self.smtp(s)).transpose()?;
        let dkim_signing = raw.dkim_signing.map(|d| self.dkim(d)).transpose()?;
        let dns = self.dns(raw.dns)?;
        let auth = self.auth(raw.auth)?;
        let notify = raw.notify.map(|n| self.notify(n)).transpose()?;
        let database = raw
            .store
            .database
            .unwrap_or_else(|| PathBuf::from("/var/lib/legal-intake/cases.sqlite"));
        if database.as_os_str().is_empty() {
            return Err(self.err("store.database", "is empty: name the case log file"));
        }
        let store = Store {
            database: self.resolve(database),
        };
        let limits = self.limits(raw.limits)?;
        let hard_copy_days = raw.reminders.hard_copy_days.unwrap_or(14);
        if !(1..=365).contains(&hard_copy_days) {
            return Err(self.err(
                "reminders.hard_copy_days",
                format!("{hard_copy_days} is out of range: 1 to 365"),
            ));
        }
        let reminders = Reminders { hard_copy_days };
        let triage = self.triage(raw.triage)?;
        let metrics = raw.metrics.map(|m| self.metrics(m)).transpose()?;
        let web = raw.web.map(|w| self.web(w)).transpose()?;
        if let (Some(m), Some(w)) = (&metrics, &web)
            && m.listen == w.listen
        {
            return Err(self.err(
                "web.listen",
                format!(
                    "`{}` is metrics.listen too; give each its own port",
                    w.listen
                ),
            ));
        }
        let agencies = self.agencies(raw.agency)?;
        for (i, own) in auth.own_domains.iter().enumerate() {
            if let Some(a) = agencies.iter().find(|a| {
                a.domains
                    .iter()
                    .any(|d| d.is_within(own) || own.is_within(d))
            }) {
                return Err(self.err(
                    format!("auth.own_domains[{i}]"),
                    format!(
                        "`{own}` overlaps the domains of the agency `{}`: a domain is either ours or an agency's",
                        a.name
                    ),
                ));
            }
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            imap,
            smtp,
            dkim_signing,
            dns,
            auth,
            notify,
            store,
            limits,
            reminders,
            triage,
            metrics,
            web,
            agencies,
        })
    }

    fn imap(&self, r: RawImap) -> Result<Imap, ConfigError> {
        let host = self.host("imap.host", r.host)?;
        let tls = r.tls.unwrap_or(Tls::Implicit);
        self.tls("imap", &host, tls)?;
        let port = r
            .port
            .unwrap_or(if tls == Tls::Implicit { 993 } else { 143 });
        if port == 0 {
            return Err(self.err("imap.port", "must be between 1 and 65535"));
        }
        if r.password_file.is_some() && r.access_token_file.is_some() {
            return Err(self.err(
                "imap.access_token_file",
                "set either password_file or access_token_file, not both",
            ));
        }
        let poll = r.poll_interval_secs.unwrap_or(60);
        if poll == 0 || poll > 86_400 {
            return Err(self.err(
                "imap.poll_interval_secs",
                "must be between 1 and 86400 seconds",
            ));
        }
        let mailbox =
            |key: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
                let v = v.unwrap_or_else(|| default.to_string());
                if v.trim().is_empty() || v.contains(['\r', '\n', '"', '\0']) {
                    return Err(self.err(
                        key,
                        "must be a non-empty mailbox name without quotes or line breaks",
                    ));
                }
                Ok(v)
            };
        let imap = Imap {
            mailbox: mailbox("imap.mailbox", r.mailbox, "INBOX")?,
            processed_mailbox: mailbox("imap.processed_mailbox", r.processed_mailbox, "Processed")?,
            quarantine_mailbox: mailbox(
                "imap.quarantine_mailbox",
                r.quarantine_mailbox,
                "Quarantine",
            )?,
            host,
            port,
            tls,
            username: r.username,
            password_file: r.password_file.map(|p| self.resolve(p)),
            access_token_file: r.access_token_file.map(|p| self.resolve(p)),
            ca_file: r.ca_file.map(|p| self.resolve(p)),
            poll_interval: Duration::from_secs(poll),
        };
        if imap.mailbox == imap.processed_mailbox || imap.mailbox == imap.quarantine_mailbox {
            return Err(self.err(
                "imap.processed_mailbox",
                "the processed and quarantine mailboxes must differ from the watched mailbox",
            ));
        }
        Ok(imap)
    }

    fn smtp(&self, r: RawSmtp) -> Result<Smtp, ConfigError> {
        let host = self.host("smtp.host", r.host)?;
        let tls = r.tls.unwrap_or(Tls::Implicit);
        self.tls("smtp", &host, tls)?;
        let port = r.port.unwrap_or(match tls {
            Tls::Implicit => 465,
            Tls::Starttls => 587,
            Tls::None => 25,
        });
        if port == 0 {
            return Err(self.err("smtp.port", "must be between 1 and 65535"));
        }
        let from = self.non_empty("smtp.from", r.from)?;
        if crate::message::parse_address_header(&from).is_none() {
            return Err(self.err(
                "smtp.from",
                format!("`{from}` is not a single mailbox such as `IVPN Legal <legal@ivpn.net>`"),
            ));
        }
        if let Some(env) = &r.envelope_from
            && !env.is_empty()
            && crate::message::split_address(env).is_none()
        {
            return Err(self.err("smtp.envelope_from", "must be an address or empty"));
        }
        if r.password_file.is_some() && r.username.is_none() {
            return Err(self.err("smtp.username", "is required when password_file is set"));
        }
        Ok(Smtp {
            host,
            port,
            tls,
            username: r.username,
            password_file: r.password_file.map(|p| self.resolve(p)),
            ca_file: r.ca_file.map(|p| self.resolve(p)),
            from,
            envelope_from: r.envelope_from.filter(|e| !e.is_empty()),
        })
    }

    fn dkim(&self, r: RawDkimSigning) -> Result<DkimSigning, ConfigError> {
        let domain = self.non_empty("dkim_signing.domain", r.domain)?;
        if normalize_domain(&domain).is_none() {
            return Err(self.err("dkim_signing.domain", "is not a domain name"));
        }
        let selector = self.non_empty("dkim_signing.selector", r.selector)?;
        if !selector.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(self.err(
                "dkim_signing.selector",
                "must be DNS labels (letters, digits, `-`, `_`)",
            ));
        }
        Ok(DkimSigning {
            domain,
            selector,
            private_key_file: self
                .resolve(self.required("dkim_signing.private_key_file", r.private_key_file)?),
        })
    }

    fn dns(&self, r: RawDns) -> Result<Dns, ConfigError> {
        let mut nameservers = Vec::new();
        for (i, ns) in r.nameservers.iter().enumerate() {
            let addr = ns
                .parse::<SocketAddr>()
                .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    self.err(
                        format!("dns.nameservers[{i}]"),
                        format!("`{ns}` is not an address such as `127.0.0.1:5353` or `[::1]:53`"),
                    )
                })?;
            nameservers.push(addr);
        }
        let timeout = r.timeout_secs.unwrap_or(5);
        if timeout == 0 || timeout > 60 {
            return Err(self.err("dns.timeout_secs", "must be between 1 and 60 seconds"));
        }
        Ok(Dns {
            nameservers,
            timeout: Duration::from_secs(timeout),
        })
    }

    fn auth(&self, r: RawAuth) -> Result<Auth, ConfigError> {
        let mut trusted_mx = Vec::new();
        for (i, mx) in r.trusted_mx.iter().enumerate() {
            trusted_mx.push(normalize_domain(mx).ok_or_else(|| {
                self.err(
                    format!("auth.trusted_mx[{i}]"),
                    format!("`{mx}` is not a host name"),
                )
            })?);
        }
        let mut internal_networks = Vec::new();
        for (i, net) in r.internal_networks.iter().enumerate() {
            let parsed = net
                .parse::<IpNet>()
                .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    self.err(
                        format!("auth.internal_networks[{i}]"),
                        format!("`{net}` is not a network such as `10.0.0.0/8`"),
                    )
                })?;
            internal_networks.push(parsed);
        }
        let max_signatures = r.max_signatures.unwrap_or(8);
        if max_signatures == 0 || max_signatures > 100 {
            return Err(self.err("auth.max_signatures", "must be between 1 and 100"));
        }
        let budget = r.time_budget_secs.unwrap_or(30);
        if budget == 0 || budget > 600 {
            return Err(self.err("auth.time_budget_secs", "must be between 1 and 600 seconds"));
        }
        let mut own_domains = Vec::new();
        for (i, d) in r.own_domains.iter().enumerate() {
            own_domains.push(self.organisation_domain(&format!("auth.own_domains[{i}]"), d)?);
        }
        Ok(Auth {
            trusted_mx,
            internal_networks,
            max_signatures,
            time_budget: Duration::from_secs(budget),
            own_domains,
        })
    }

    fn notify(&self, r: RawNotify) -> Result<Notify, ConfigError> {
        if r.to.is_empty() {
            return Err(self.err("notify.to", "must list at least one address"));
        }
        for (i, to) in r.to.iter().enumerate() {
            if crate::message::split_address(to).is_none() {
                return Err(self.err(
                    format!("notify.to[{i}]"),
                    format!("`{to}` is not an address"),
                ));
            }
        }
        let digest_hour = r.digest_hour.unwrap_or(8);
        if digest_hour > 23 {
            return Err(self.err("notify.digest_hour", "must be an hour from 0 to 23"));
        }
        Ok(Notify {
            to: r.to,
            digest_hour,
        })
    }

    fn limits(&self, r: RawLimits) -> Result<Limits, ConfigError> {
        let max = r.max_message_bytes.unwrap_or(52_428_800);
        if max < 1024 {
            return Err(self.err("limits.max_message_bytes", "must be at least 1024"));
        }
        let tries = r.defer_max_tries.unwrap_or(5);
        if tries == 0 {
            return Err(self.err("limits.defer_max_tries", "must be at least 1"));
        }
        Ok(Limits {
            max_message_bytes: max,
            defer_max_tries: tries,
            replies_per_sender_per_day: r.replies_per_sender_per_day.unwrap_or(10),
        })
    }

    fn triage(&self, r: RawTriage) -> Result<Triage, ConfigError> {
        let patterns = r.account_patterns.unwrap_or_else(|| {
            DEFAULT_ACCOUNT_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        for (i, p) in patterns.iter().enumerate() {
            if !p.contains('X') || p.len() > 64 {
                return Err(self.err(
                    format!("triage.account_patterns[{i}]"),
                    "must contain `X` placeholders (any letter or digit) and be at most 64 characters",
                ));
            }
        }
        Ok(Triage {
            account_patterns: patterns,
        })
    }

    fn metrics(&self, r: RawMetrics) -> Result<Metrics, ConfigError> {
        let allow_remote = r.allow_remote.unwrap_or(false);
        let listen = self.listen(
            "metrics",
            r.listen,
            allow_remote,
            "Prometheus has to know where to scrape",
            "the figures reveal case activity",
        )?;
        Ok(Metrics {
            listen,
            allow_remote,
        })
    }

    fn web(&self, r: RawWeb) -> Result<Web, ConfigError> {
        let allow_remote = r.allow_remote.unwrap_or(false);
        let listen = self.listen(
            "web",
            r.listen,
            allow_remote,
            "the reverse proxy has to know where to forward",
            "the board shows the cases themselves",
        )?;
        let session_hours = r.session_hours.unwrap_or(8);
        if !(1..=168).contains(&session_hours) {
            return Err(self.err(
                "web.session_hours",
                format!("{session_hours} is out of range: 1 to 168 (a week)"),
            ));
        }
        Ok(Web {
            listen,
            allow_remote,
            session_hours,
        })
    }

    /// `SECTION.listen`: an address and a port, on loopback unless
    /// `allow_remote` says otherwise.
    fn listen(
        &self,
        section: &str,
        listen: Option<String>,
        allow_remote: bool,
        why_port: &str,
        why_loopback: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let key = format!("{section}.listen");
        let listen = self.non_empty(&key, listen)?;
        let addr = listen.trim().parse::<SocketAddr>().map_err(|_| {
            self.err(
                &key,
                format!(
                    "`{listen}` is not an address and port such as `127.0.0.1:9187` or `[::1]:9187`"
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(self.err(&key, format!("must name a port ({why_port})")));
        }
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(self.err(
                &key,
                format!(
                    "`{addr}` is reachable from other machines, and {why_loopback}; \
                     listen on 127.0.0.1 or ::1, or set `allow_remote = true` behind a firewall"
                ),
            ));
        }
        Ok(addr)
    }

    fn agencies(&self, raw: Vec<RawAgency>) -> Result<Vec<Agency>, ConfigError> {
        let mut agencies = Vec::new();
        for (i, a) in raw.into_iter().enumerate() {
            let name = self.non_empty(&format!("agency[{i}].name"), a.name)?;
            if a.domains.is_empty() {
                return Err(self.err(
                    format!("agency[{i}].domains"),
                    "must list at least one domain",
                ));
            }
            let mut domains = Vec::new();
            for (j, d) in a.domains.iter().enumerate() {
                domains.push(self.organisation_domain(&format!("agency[{i}].domains[{j}]"), d)?);
            }
            agencies.push(Agency { name, domains });
        }
        Ok(agencies)
    }

    /// A domain that names one organisation: a valid name, not a public
    /// suffix (`gov.gi`, `com`).
    fn organisation_domain(&self, key: &str, d: &str) -> Result<DomainName, ConfigError> {
        let norm = normalize_domain(d)
            .ok_or_else(|| self.err(key, format!("`{d}` is not a domain name")))?;
        if norm.as_str().split('.').count() < 2
            || psl::suffix_str(norm.as_str()) == Some(norm.as_str())
        {
            return Err(self.err(
                key,
                format!("`{d}` is a public suffix; name the organisation's own domain"),
            ));
        }
        Ok(norm)
    }
}

/// True for `localhost` and loopback addresses (brackets allowed).
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// What the configuration names on disk, checked without connecting:
    /// the case log must be a file, not a folder (an error); a secret file
    /// that cannot be read, or a case log folder that does not exist, is a
    /// warning, since `check-config` is often run by hand before the files
    /// are in place (a systemd credential under `/run/credentials/` exists
    /// only inside its service and is not looked at).
    pub fn check_files(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let secrets = [
            ("imap.password_file", self.imap.password_file.as_ref()),
            (
                "imap.access_token_file",
                self.imap.access_token_file.as_ref(),
            ),
            (
                "smtp.password_file",
                self.smtp.as_ref().and_then(|s| s.password_file.as_ref()),
            ),
        ];
        for (key, path) in secrets {
            let Some(path) = path else { continue };
            let credential = path.starts_with("/run/credentials");
            if credential && !path.parent().is_some_and(Path::exists) {
                continue;
            }
            if let Err(reason) = read_secret(path, key) {
                warnings.push(format!("{reason}: the daemon cannot log in without it"));
            }
        }
        let db = &self.store.database;
        if db.is_dir() {
            return Err(ConfigError {
                file: self.path.clone(),
                key: "store.database".into(),
                reason: format!("{} is a folder: name the case log file", db.display()),
            });
        }
        if let Some(folder) = db.parent().filter(|p| !p.as_os_str().is_empty())
            && !folder.is_dir()
        {
            warnings.push(format!(
                "store.database: the folder {} does not exist (yet): the case log cannot be created",
                folder.display()
            ));
        }
        Ok(warnings)
    }
}

/// Reads a secret file named by configuration key `key` (a systemd
/// credential): its text without one trailing line break (`echo secret >
/// file` and systemd-creds add one; anything else, spaces included, is
/// part of the secret). The error names the key and the path, never the
/// content.
pub fn read_secret(path: &Path, key: &str) -> Result<String, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("{key} {} is not UTF-8 text", path.display()))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[imap]\nhost = \"127.0.0.1\"\ntls = \"none\"\n";

    fn check(text: &str, expected_key: &str, reason_has: &str) {
        let err = Config::parse(Path::new("/etc/x/config.toml"), text).unwrap_err();
        assert_eq!(err.key, expected_key, "{err}");
        assert!(err.reason.contains(reason_has), "{err}");
        assert!(err.to_string().starts_with("/etc/x/config.toml: "), "{err}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(Path::new("/etc/x/config.toml"), MINIMAL).unwrap();
        assert_eq!(c.imap.port, 143);
        assert_eq!(c.imap.mailbox, "INBOX");
        assert_eq!(c.limits.defer_max_tries, 5);
        assert_eq!(c.limits.replies_per_sender_per_day, 10);
        assert_eq!(c.triage.account_patterns.len(), 2);
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        check(
            "[imap]\nhost = \"a\"\ncolour = 1\n",
            "imap.colour",
            "unknown field",
        );
        check(
            "[imap]\nhost = \"a\"\nport = \"x\"\n",
            "imap.port",
            "invalid type",
        );
        check("[imap]\nport = 1\n", "imap.host", "required");
        check(
            "[imap]\nhost = \"imap.example.net\"\ntls = \"none\"\n",
            "imap.tls",
            "loopback",
        );
        check(
            &format!("{MINIMAL}[dns]\nnameservers = [\"nope\"]\n"),
            "dns.nameservers[0]",
            "not an address",
        );
        check(
            &format!("{MINIMAL}[auth]\ninternal_networks = [\"10.0.0.0/33\"]\n"),
            "auth.internal_networks[0]",
            "network",
        );
        check(
            &format!("{MINIMAL}[[agency]]\nname = \"X\"\ndomains = [\"gi\"]\n"),
            "agency[0].domains[0]",
            "public suffix",
        );
        check(
            &format!("{MINIMAL}[[agency]]\nname = \"X\"\ndomains = []\n"),
            "agency[0].domains",
            "at least one",
        );
        check(
            "[imap]\nhost = \"a\"\n[bogus]\nx = 1\n",
            "bogus",
            "unknown field",
        );
        check(
            &format!(
                "{MINIMAL}[smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"a@b.c, d@e.f\"\n"
            ),
            "smtp.from",
            "single mailbox",
        );
    }

    #[test]
    fn reminders_default_to_a_fortnight_within_a_year() {
        let c = Config::parse(Path::new("/etc/x/config.toml"), MINIMAL).unwrap();
        assert_eq!(c.reminders.hard_copy_days, 14);
        let c = Config::parse(
            Path::new("/etc/x/config.toml"),
            &format!("{MINIMAL}[reminders]\nhard_copy_days = 30\n"),
        )
        .unwrap();
        assert_eq!(c.reminders.hard_copy_days, 30);
        check(
            &format!("{MINIMAL}[reminders]\nhard_copy_days = 0\n"),
            "reminders.hard_copy_days",
            "1 to 365",
        );
    }

    #[test]
    fn the_board_listens_on_loopback_with_bounded_sessions() {
        let c = Config::parse(
            Path::new("/etc/x/config.toml"),
            &format!("{MINIMAL}[web]\nlisten = \"127.0.0.1:8025\"\n"),
        )
        .unwrap();
        let w = c.web.as_ref().expect("a [web] section");
        assert_eq!(
            (w.listen.to_string().as_str(), w.session_hours),
            ("127.0.0.1:8025", 8)
        );
        assert!(c.summary().ends_with(", board http://127.0.0.1:8025/"));
        check(
            &format!("{MINIMAL}[web]\nlisten = \"192.0.2.7:8025\"\n"),
            "web.listen",
            "the board shows the cases",
        );
        check(&format!("{MINIMAL}[web]\n"), "web.listen", "is required");
        check(
            &format!("{MINIMAL}[web]\nlisten = \"127.0.0.1:8025\"\nsession_hours = 0\n"),
            "web.session_hours",
            "1 to 168",
        );
        check(
            &format!(
                "{MINIMAL}[web]\nlisten = \"127.0.0.1:8025\"\n[metrics]\nlisten = \"127.0.0.1:8025\"\n"
            ),
            "web.listen",
            "its own port",
        );
    }

    #[test]
    fn metrics_listen_on_loopback_unless_remote_is_allowed() {
        let parse = |section: &str| {
            Config::parse(
                Path::new("/etc/x/config.toml"),
                &format!("{MINIMAL}[metrics]\n{section}"),
            )
        };
        for (section, listen) in [
            ("listen = \"127.0.0.1:9187\"\n", "127.0.0.1:9187"),
            ("listen = \"[::1]:9187\"\n", "[::1]:9187"),
            (
                "listen = \"0.0.0.0:9187\"\nallow_remote = true\n",
                "0.0.0.0:9187",
            ),
            (
                "listen = \"192.0.2.7:9187\"\nallow_remote = true\n",
                "192.0.2.7:9187",
            ),
        ] {
            let c = parse(section).unwrap_or_else(|e| panic!("{section}: {e}"));
            let m = c.metrics.as_ref().expect("a [metrics] section");
            assert_eq!(m.listen.to_string(), listen);
            assert!(
                c.summary()
                    .ends_with(&format!(", metrics http://{listen}/metrics"))
            );
        }
        let none = Config::parse(Path::new("/c.toml"), MINIMAL).unwrap();
        assert!(none.metrics.is_none());
        assert!(!none.summary().contains("metrics"));
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"0.0.0.0:9187\"\n"),
            "metrics.listen",
            "allow_remote = true",
        );
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"[::]:9187\"\nallow_remote = false\n"),
            "metrics.listen",
            "reveal case activity",
        );
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"localhost:9187\"\n"),
            "metrics.listen",
            "not an address and port",
        );
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"127.0.0.1\"\n"),
            "metrics.listen",
            "not an address and port",
        );
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"127.0.0.1:0\"\n"),
            "metrics.listen",
            "must name a port",
        );
        check(
            &format!("{MINIMAL}[metrics]\nallow_remote = true\n"),
            "metrics.listen",
            "is required",
        );
        check(
            &format!("{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9187\"\npath = \"/m\"\n"),
            "metrics.path",
            "unknown field",
        );
    }

    #[test]
    fn files_named_by_the_configuration_are_checked_without_connecting() {
        check(
            &format!("{MINIMAL}[store]\ndatabase = \"\"\n"),
            "store.database",
            "is empty",
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let parse = |extra: &str| {
            Config::parse(
                &config,
                &format!("[imap]\nhost = \"127.0.0.1\"\ntls = \"none\"\n{extra}"),
            )
            .unwrap()
        };
        // A folder for the case log is an error.
        let err = parse("[store]\ndatabase = \".\"\n")
            .check_files()
            .unwrap_err();
        assert_eq!(err.key, "store.database");
        // A secret that cannot be read, a case log folder that is not there
        // yet: warnings naming the key; a credential of the service is not
        // looked at from outside it.
        let warnings =
            parse("password_file = \"missing\"\n[store]\ndatabase = \"nowhere/cases.sqlite\"\n")
                .check_files()
                .unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("imap.password_file"), "{warnings:?}");
        assert!(warnings[1].contains("store.database"), "{warnings:?}");
        std::fs::write(dir.path().join("secret"), "s\n").unwrap();
        let clean = parse(
            "password_file = \"secret\"\n[smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"legal@ivpn.net\"\nusername = \"u\"\npassword_file = \"/run/credentials/legal-intake.service/smtp\"\n[store]\ndatabase = \"cases.sqlite\"\n",
        );
        assert_eq!(clean.check_files().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_folder() {
        let text = format!("{MINIMAL}[store]\ndatabase = \"cases.sqlite\"\n");
        let c = Config::parse(Path::new("/etc/x/config.toml"), &text).unwrap();
        assert_eq!(c.store.database, PathBuf::from("/etc/x/cases.sqlite"));
    }

    #[test]
    fn agency_domains_match_whole_labels() {
        let text = format!("{MINIMAL}[[agency]]\nname = \"Police\"\ndomains = [\"Police.GI\"]\n");
        let c = Config::parse(Path::new("/c.toml"), &text).unwrap();
        let p = crate::decide::Policy::from_config(&c);
        let d = |s: &str| normalize_domain(s).unwrap();
        assert_eq!(p.agency_for(&d("police.gi")), Some("Police"));
        assert_eq!(p.agency_for(&d("cid.police.gi")), Some("Police"));
        assert_eq!(p.agency_for(&d("evilpolice.gi")), None);
        assert_eq!(p.agency_for(&d("police.gi.example.com")), None);
    }

    #[test]
    fn secrets_lose_one_trailing_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for (content, expected) in [
            ("pw \n", "pw "),
            ("pw\r\n", "pw"),
            ("pw\n\n", "pw\n"),
            ("pw", "pw"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_secret(&path, "smtp.password_file").unwrap(), expected);
        }
        let err = read_secret(&dir.path().join("missing"), "imap.password_file").unwrap_err();
        assert!(
            err.starts_with("cannot read imap.password_file ") && err.contains("missing"),
            "{err}"
        );
    }
}
