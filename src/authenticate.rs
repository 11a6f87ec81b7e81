//! Edge: DKIM and SPF through mail-auth, DNS through hickory → [`Evidence`].
//!
//! This module is the only one that touches mail-auth's types; what leaves
//! it is plain owned data in RFC 8601 words, with the DNS records each
//! verdict rested on, so the decision stays a pure function and the case
//! log can keep the evidence as it was at receipt.
//!
//! mail-auth is permissive where the policy must not be, so this module
//! adds the hardening itself:
//! - `rsa-sha1` signatures are refused as `policy` before any DNS work
//!   (RFC 8301 §3.1), and RSA keys under 1024 bits give `policy`;
//! - signatures with `l=` never pass (mail-auth's strict parse turns them
//!   into an error, reported here as `policy`);
//! - at most `auth.max_signatures` signatures are examined, those aligned
//!   with the From domain first, and all checks of one message share one
//!   time budget;
//! - a DNS failure that is not an authoritative "no such record" is a
//!   `temperror`, never a `permerror`, so it defers instead of condemning.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::system_conf::read_system_conf;
use ipnet::IpNet;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{DkimError, Signature};
use mail_auth::hickory_resolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DnsError, Error as AuthError, MessageAuthenticator, SpfResult,
};
use serde::Serialize;

use crate::config::Config;
use crate::decide;
use crate::domain::{DomainName, normalize_domain};
use crate::message::{Hop, Inbound, ReturnPath};

/// A check's outcome in the words of RFC 8601.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    Neutral,
    None,
    SoftFail,
    TempError,
    PermError,
    Policy,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::SoftFail => "softfail",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
            AuthResult::Policy => "policy",
        }
    }
}

/// What the authentication of one message found.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// One entry per DKIM-Signature header examined (or refused).
    pub dkim: Vec<DkimCheck>,
    pub spf: SpfCheck,
    pub dmarc: DmarcCheck,
}

/// One DKIM signature and its result.
#[derive(Debug, Clone, Serialize)]
pub struct DkimCheck {
    /// The signing domain (`d=`), normalised when valid.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// `rsa-sha256`, `ed25519-sha256`, `rsa-sha1` (refused) or `unknown`.
    pub algorithm: &'static str,
    pub result: AuthResult,
    /// Why the result is not `pass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key record (`selector._domainkey.domain` TXT) as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_record: Option<String>,
}

/// The SPF check of the envelope sender at the trusted hop.
#[derive(Debug, Clone, Serialize)]
pub struct SpfCheck {
    pub result: AuthResult,
    /// The domain whose policy was evaluated (the envelope sender's).
    pub domain: Option<String>,
    /// The client address recorded by the trusted MX.
    pub ip: Option<IpAddr>,
    /// The HELO name recorded by the trusted MX.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// The envelope sender (`postmaster@HELO` for `<>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `Received` line that supplied the inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// The domain's SPF record as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// DMARC-style alignment of the results with the From domain.
#[derive(Debug, Clone, Serialize)]
pub struct DmarcCheck {
    /// `pass` when the From domain is authenticated by an aligned
    /// identifier, `temperror` when a transient failure prevented it,
    /// `fail` otherwise, `none` when there is no From domain to align.
    pub result: AuthResult,
    /// The published policy (`p=`) of the From domain, informational.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The `_dmarc` record as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

impl Evidence {
    /// Evidence for a message that was not checked at all.
    pub fn unchecked(reason: &str) -> Evidence {
        Evidence {
            dkim: Vec::new(),
            spf: SpfCheck::none(reason),
            dmarc: DmarcCheck {
                result: AuthResult::None,
                policy: None,
                record: None,
            },
        }
    }
}

impl SpfCheck {
    fn none(reason: &str) -> SpfCheck {
        SpfCheck {
            result: AuthResult::None,
            domain: None,
            ip: None,
            helo: None,
            envelope_from: None,
            reason: Some(reason.to_string()),
            received: None,
            record: None,
        }
    }
}

/// The smallest RSA key accepted (RFC 8301 §3.2).
const MIN_RSA_BITS: usize = 1024;

/// Runs the checks; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: MessageAuthenticator,
    trusted_mx: Vec<DomainName>,
    internal_networks: Vec<IpNet>,
    max_signatures: usize,
    budget: Duration,
}

impl Authenticator {
    /// Builds the resolver: the configured nameservers (UDP and TCP), or
    /// the system's when none are configured.
    pub fn new(config: &Config) -> anyhow::Result<Authenticator> {
        let (resolver_config, mut opts) = if config.dns.nameservers.is_empty() {
            read_system_conf().map_err(|e| {
                anyhow::anyhow!("cannot read the system resolver configuration: {e}")
            })?
        } else {
            let servers = config
                .dns
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = config.dns.timeout;
        // hickory counts retries: one retry, so two tries per server.
        opts.attempts = 1;
        opts.cache_size = 4096;
        // Names are always absolute here; never append a search domain.
        opts.ndots = 0;
        // Evidence comes from DNS alone, never from a local hosts file.
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver = MessageAuthenticator::new(resolver_config, opts)
            .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;
        Ok(Authenticator {
            inner: Arc::new(Inner {
                resolver,
                trusted_mx: config.auth.trusted_mx.clone(),
                internal_networks: config.auth.internal_networks.clone(),
                max_signatures: config.auth.max_signatures,
                budget: config.auth.time_budget,
            }),
        })
    }

    /// Authenticates one message. Never fails: every problem is a result.
    pub async fn authenticate(&self, raw: &[u8], inbound: &Inbound) -> Evidence {
        if let Some(a) = inbound.anomalies.first() {
            return Evidence::unchecked(&format!("not checked: {a}"));
        }
        let deadline = Instant::now() + self.inner.budget;
        let from = inbound.from_domain();
        let (dkim, spf) = tokio::join!(
            self.dkim(raw, from, deadline),
            self.spf(&inbound.received, inbound.return_path.as_ref(), deadline)
        );
        let mut evidence = Evidence {
            dkim,
            spf,
            dmarc: DmarcCheck {
                result: AuthResult::None,
                policy: None,
                record: None,
            },
        };
        if let Some(from) = from {
            evidence.dmarc.result = decide::alignment(from, &evidence).dmarc_result();
            let (record, policy) = self.dmarc_record(from, deadline).await;
            evidence.dmarc.record = record;
            evidence.dmarc.policy = policy;
        }
        evidence
    }

    async fn dkim(
        &self,
        raw: &[u8],
        from: Option<&DomainName>,
        deadline: Instant,
    ) -> Vec<DkimCheck> {
        let Some(mut message) = AuthenticatedMessage::parse(raw) else {
            return Vec::new();
        };
        let mut checks = Vec::new();

        // Signatures that could not be parsed, or that carry `l=` (which
        // the strict parse refuses), are reported with the d= and s= read
        // from the header, so that an aligned one still blocks SPF.
        for e in &message.errors {
            // The list also holds ARC and DKIM2 errors; only DKIM-Signature
            // headers are ours. Any error counts, whatever its kind (a
            // missing b= is as broken as an unknown algorithm).
            if !e.name.eq_ignore_ascii_case(b"DKIM-Signature") {
                continue;
            }
            let (domain, selector, algorithm) = tags(e.value);
            let (result, reason) = match &e.header {
                AuthError::Dkim(DkimError::SignatureLength) => (
                    AuthResult::Policy,
                    "body length limit (l=) not accepted: content could be appended".to_string(),
                ),
                other => (
                    AuthResult::PermError,
                    format!("malformed signature: {other}"),
                ),
            };
            checks.push(DkimCheck {
                domain,
                selector,
                algorithm,
                result,
                reason: Some(reason),
                key_record: None,
            });
        }

        // rsa-sha1 is refused outright; the rest are ordered aligned-first
        // and cut to the configured number.
        let mut kept = Vec::new();
        for h in message.dkim_headers.drain(..) {
            if h.header.a == Algorithm::RsaSha1 {
                checks.push(DkimCheck {
                    domain: h.header.d.to_ascii_lowercase(),
                    selector: h.header.s.clone(),
                    algorithm: "rsa-sha1",
                    result: AuthResult::Policy,
                    reason: Some("rsa-sha1 is not accepted (RFC 8301)".to_string()),
                    key_record: None,
                });
            } else {
                kept.push(h);
            }
        }
        let is_aligned = |s: &Signature| {
            from.zip(normalize_domain(&s.d))
                .is_some_and(|(f, d)| f.aligned_with(&d))
        };
        kept.sort_by_key(|h| !is_aligned(&h.header));
        for h in kept.drain(self.inner.max_signatures.min(kept.len())..) {
            checks.push(DkimCheck {
                domain: h.header.d.to_ascii_lowercase(),
                selector: h.header.s.clone(),
                algorithm: algorithm_name(h.header.a),
                result: AuthResult::None,
                reason: Some(format!(
                    "not examined: more than {} signatures",
                    self.inner.max_signatures
                )),
                key_record: None,
            });
        }
        message.dkim_headers = kept;
        // Errors were reported above; mail-auth would report them again.
        message.errors.clear();

        let examined: Vec<(String, String, &'static str)> = message
            .dkim_headers
            .iter()
            .map(|h| {
                (
                    h.header.d.to_ascii_lowercase(),
                    h.header.s.clone(),
                    algorithm_name(h.header.a),
                )
            })
            .collect();
        let outputs =
            tokio::time::timeout_at(deadline.into(), self.inner.resolver.verify_dkim(&message))
                .await;
        let Ok(outputs) = outputs else {
            for (domain, selector, algorithm) in examined {
                checks.push(DkimCheck {
                    domain,
                    selector,
                    algorithm,
                    result: AuthResult::TempError,
                    reason: Some("time budget for this message exhausted".to_string()),
                    key_record: None,
                });
            }
            return checks;
        };

        for output in outputs {
            let Some(sig) = output.signature() else {
                continue;
            };
            let (mut result, mut reason) = dkim_result(output.result());
            let key_name = format!("{}._domainkey.{}.", sig.s, sig.d);
            let key_record = if result == AuthResult::TempError {
                None
            } else {
                self.txt(&key_name, deadline)
                    .await
                    .ok()
                    .and_then(|r| r.into_iter().next())
            };
            // The key size is checked whatever the library said, so that a
            // short key is reported as what it is rather than as a bad
            // signature.
            if sig.a == Algorithm::RsaSha256 && result != AuthResult::TempError {
                let bits = key_record
                    .as_deref()
                    .and_then(|r| DomainKey::parse(r.as_bytes()).ok())
                    .map(|k| k.p.public_key_bits());
                if let Some(bits) = bits.filter(|b| (1..MIN_RSA_BITS).contains(b)) {
                    result = AuthResult::Policy;
                    reason = Some(format!("RSA key of {bits} bits is too short (RFC 8301)"));
                }
            }
            checks.push(DkimCheck {
                domain: sig.d.to_ascii_lowercase(),
                selector: sig.s.clone(),
                algorithm: algorithm_name(sig.a),
                result,
                reason,
                key_record,
            });
        }
        checks
    }

    /// The first `Received` line that the policy accepts as evidence: added
    /// by a trusted MX, over SMTP, from a client outside the internal
    /// networks. Lines below it were written by the sender's side and are
    /// not looked at.
    pub fn trusted_hop<'a>(&self, hops: &'a [Hop]) -> Option<&'a Hop> {
        hops.iter().find(|h| {
            h.by.as_ref()
                .is_some_and(|by| self.inner.trusted_mx.contains(by))
                && h.is_smtp()
                && !h
                    .ip
                    .is_some_and(|ip| self.inner.internal_networks.iter().any(|n| n.contains(&ip)))
        })
    }

    async fn spf(
        &self,
        hops: &[Hop],
        return_path: Option<&ReturnPath>,
        deadline: Instant,
    ) -> SpfCheck {
        let Some(hop) = self.trusted_hop(hops) else {
            return SpfCheck::none("no Received line from a trusted MX (auth.trusted_mx)");
        };
        let mut check = SpfCheck::none("");
        check.received = Some(hop.raw.clone());
        check.helo = hop.helo.clone();
        check.ip = hop.ip;
        let Some(ip) = hop.ip else {
            check.reason = Some("the trusted Received line records no client address".into());
            return check;
        };
        let helo = hop.helo.clone().unwrap_or_default();
        let sender = match return_path {
            Some(ReturnPath::Address(a)) => a.clone(),
            // RFC 7208 §2.4: a null reverse-path is checked as
            // postmaster@HELO.
            Some(ReturnPath::Null) => format!("postmaster@{helo}"),
            None => {
                check.reason = Some("no Return-Path: the envelope sender is unknown".into());
                return check;
            }
        };
        let host = hop.by.as_ref().map(|d| d.to_string()).unwrap_or_default();
        let evaluated = self.check_spf(ip, &helo, &host, &sender, deadline).await;
        SpfCheck {
            received: check.received,
            ..evaluated
        }
    }

    /// RFC 7208 `check_host()` for the envelope sender `sender` (already
    /// `postmaster@HELO` for a null path) arriving from `ip`; `host` is the
    /// receiving host's name (for the `%{r}` macro). This is the whole SPF
    /// path the decision uses, exposed for the RFC 7208 test suite.
    pub async fn check_spf(
        &self,
        ip: IpAddr,
        helo: &str,
        host: &str,
        sender: &str,
        deadline: Instant,
    ) -> SpfCheck {
        let mut check = SpfCheck::none("");
        check.ip = Some(ip);
        check.helo = (!helo.is_empty()).then(|| helo.to_string());
        check.envelope_from = Some(sender.to_string());
        let Some(domain) = sender
            .rsplit_once('@')
            .and_then(|(_, d)| normalize_domain(d))
        else {
            check.reason = Some("the envelope sender has no valid domain".into());
            return check;
        };
        check.domain = Some(domain.to_string());
        check.reason = None;
        let params = SpfParameters::verify_mail_from(unmapped(ip), helo, host, sender);
        match tokio::time::timeout_at(deadline.into(), self.inner.resolver.verify_spf(params)).await
        {
            Ok(output) => {
                check.result = spf_result(output.result());
                check.reason = match check.result {
                    AuthResult::Pass => None,
                    other => Some(format!("SPF {} for {ip} in {domain}", other.as_str())),
                };
            }
            Err(_) => {
                check.result = AuthResult::TempError;
                check.reason = Some("time budget for this message exhausted".into());
                return check;
            }
        }
        if check.result != AuthResult::TempError
            && let Ok(records) = self.txt(&format!("{domain}."), deadline).await
        {
            check.record = records
                .into_iter()
                .find(|r| r.to_ascii_lowercase().starts_with("v=spf1"));
        }
        check
    }

    /// The DMARC record of the From domain, or of its organizational
    /// domain (RFC 7489 §6.6.3); informational only.
    async fn dmarc_record(
        &self,
        from: &DomainName,
        deadline: Instant,
    ) -> (Option<String>, Option<String>) {
        let mut names = vec![from.as_str().to_string()];
        if from.organizational() != from.as_str() {
            names.push(from.organizational().to_string());
        }
        for name in names {
            let Ok(records) = self.txt(&format!("_dmarc.{name}."), deadline).await else {
                continue;
            };
            if let Some(r) = records
                .into_iter()
                .find(|r| r.to_ascii_lowercase().starts_with("v=dmarc1"))
            {
                let policy = r
                    .split(';')
                    .filter_map(|t| t.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("p"))
                    .map(|(_, v)| v.trim().to_ascii_lowercase());
                return (Some(r), policy);
            }
        }
        (None, None)
    }

    /// The TXT records of `name`, each record's strings joined; an empty
    /// list when the name has none (NXDOMAIN, NODATA); an error saying
    /// why when the resolver could not find out.
    pub async fn txt(&self, name: &str, deadline: Instant) -> Result<Vec<String>, String> {
        let lookup = self.inner.resolver.resolver().txt_lookup(name);
        let lookup = match tokio::time::timeout_at(deadline.into(), lookup).await {
            Err(_) => return Err("no answer in time".to_string()),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(crate::message::clean(&e.to_string(), 200)),
            Ok(Ok(lookup)) => lookup,
        };
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }
}

/// RFC 7208 §5: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
/// dual-stack MTAs record IPv4 peers) is evaluated as the IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// `d=`, `s=` and `a=` read leniently from a signature mail-auth could not
/// parse.
fn tags(value: &[u8]) -> (String, String, &'static str) {
    let text = String::from_utf8_lossy(value);
    let mut d = String::new();
    let mut s = String::new();
    let mut a = "unknown";
    for tag in text.split(';') {
        if let Some((k, v)) = tag.split_once('=') {
            let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            match k.trim() {
                "d" => d = crate::message::clean(&v.to_ascii_lowercase(), 253),
                "s" => s = crate::message::clean(&v, 63),
                "a" => {
                    a = match v.to_ascii_lowercase().as_str() {
                        "rsa-sha256" => "rsa-sha256",
                        "rsa-sha1" => "rsa-sha1",
                        "ed25519-sha256" => "ed25519-sha256",
                        _ => "unknown",
                    }
                }
                _ => {}
            }
        }
    }
    (d, s, a)
}

/// Maps mail-auth's DKIM outcome to RFC 8601 words and a reason.
fn dkim_result(result: &DkimResult) -> (AuthResult, Option<String>) {
    match result {
        DkimResult::Pass => (AuthResult::Pass, None),
        DkimResult::None => (AuthResult::None, None),
        DkimResult::TempError(e) => (AuthResult::TempError, Some(describe(e))),
        DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e) => {
            let r = match e {
                AuthError::Dns(DnsError::Resolver(_)) => AuthResult::TempError,
                AuthError::Dns(DnsError::RecordNotFound(code))
                    if !is_authoritative_absence(code) =>
                {
                    AuthResult::TempError
                }
                AuthError::Dns(_) => AuthResult::PermError,
                AuthError::Dkim(DkimError::FailedBodyHashMatch)
                | AuthError::Dkim(DkimError::SignatureExpired)
                | AuthError::Dkim(DkimError::RevokedPublicKey)
                | AuthError::Dkim(DkimError::FailedAuidMatch)
                | AuthError::Crypto(_) => AuthResult::Fail,
                AuthError::Dkim(DkimError::SignatureLength) => AuthResult::Policy,
                _ if matches!(result, DkimResult::Fail(_)) => AuthResult::Fail,
                _ if matches!(result, DkimResult::Neutral(_)) => AuthResult::Neutral,
                _ => AuthResult::PermError,
            };
            (r, Some(describe(e)))
        }
    }
}

/// NXDOMAIN and NOERROR-without-data mean the record does not exist; any
/// other response code (SERVFAIL, REFUSED) is a failure to find out.
fn is_authoritative_absence(code: &hickory_resolver::proto::op::ResponseCode) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    matches!(code, ResponseCode::NXDomain | ResponseCode::NoError)
}

fn describe(e: &AuthError) -> String {
    match e {
        AuthError::Dkim(DkimError::FailedBodyHashMatch) => {
            "body changed after signing (body hash mismatch)".into()
        }
        AuthError::Dkim(DkimError::SignatureExpired) => "signature expired (x=)".into(),
        AuthError::Dkim(DkimError::RevokedPublicKey) => "key revoked (empty p=)".into(),
        AuthError::Crypto(_) => "signature does not verify".into(),
        AuthError::Dns(DnsError::RecordNotFound(code)) if is_authoritative_absence(code) => {
            "no key record published".into()
        }
        AuthError::Dns(DnsError::RecordNotFound(code)) => {
            format!("DNS error ({code}) fetching the key")
        }
        AuthError::Dns(DnsError::Resolver(_)) => "DNS timeout or failure fetching the key".into(),
        AuthError::Dns(DnsError::InvalidRecordType) => "key record is not a valid DKIM key".into(),
        other => crate::message::clean(&other.to_string(), 200),
    }
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_unparseable_signatures() {
        let (d, s, a) = tags(b" v=1; a=rsa-sha256; d=Police.GI;\r\n s=s2026; l=10; bh=x; b=y");
        assert_eq!(
            (d.as_str(), s.as_str(), a),
            ("police.gi", "s2026", "rsa-sha256")
        );
    }
}
