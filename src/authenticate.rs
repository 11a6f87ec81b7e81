//! Edge: DKIM through mail-auth, SPF through [`crate::spf`], DNS through
//! hickory → [`Evidence`].
//!
//! This module is the only one that touches mail-auth's types; what leaves
//! it is plain owned data in RFC 8601 words, with the DNS records each
//! verdict rested on, so the decision stays a pure function and the case
//! log can keep the evidence as it was at receipt.
//!
//! SPF is the product's own strict RFC 7208 evaluator ([`crate::spf`]), on
//! the same resolver and cache as DKIM: mail-auth's turned several malformed
//! records into `pass`.
//!
//! mail-auth is permissive where the policy must not be, so for DKIM this
//! module adds the hardening itself:
//! - `rsa-sha1` signatures are refused as `policy` before any DNS work
//!   (RFC 8301 §3.1), and RSA keys under 1024 bits give `policy`;
//! - signatures with `l=` never pass (mail-auth's strict parse turns them
//!   into an error, reported here as `policy`);
//! - a signature whose `h=` leaves out From is ignored as a `permerror`
//!   (RFC 6376 §6.1.1); a key in testing mode (`t=y`) counts as no
//!   signature, a key whose `s=` is not for e-mail or whose `h=` excludes
//!   SHA-256 gives `permerror`; the key is the TXT record at the name that
//!   parses as one, and the evidence keeps that record;
//! - every signature aligned with the From domain is examined (up to 64),
//!   the others fill the rest of `auth.max_signatures`; keys are fetched
//!   concurrently, each lookup bounded by `dns.timeout`, and the first
//!   aligned pass ends the examination; all checks of one message share one
//!   time budget, and the informational DMARC lookup has one lookup's time
//!   of its own;
//! - a DNS failure that is not an authoritative "no such record" is a
//!   `temperror`, never a `permerror`, so it defers instead of condemning.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY};
use futures_util::StreamExt;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::system_conf::read_system_conf;
use ipnet::IpNet;
use mail_auth::common::crypto::{Algorithm, VerifyingKey};
use mail_auth::common::headers::Header;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{DkimError, Signature};
use mail_auth::{
    AuthenticatedMessage, DkimResult, DnsError, Error as AuthError, MessageAuthenticator,
    Parameters, ResolverCache, Txt,
};

use crate::config::Config;
use crate::domain::{DomainName, normalize_domain};
use crate::evidence::{self, AuthResult, DkimCheck, Evidence, SpfCheck};
use crate::hickory_resolver;
use crate::message::{Hop, Inbound, ReturnPath};
use crate::spf::{self, SpfResult};

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
    dns_timeout: Duration,
    keys: KeyCache,
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
        // hickory builds a DNS-over-TLS client configuration whether or not
        // it is used, from every certificate of the system's store: 4 ms at
        // each start, most of what `verify` or `ingest` spends on one
        // message. Lookups here are UDP and TCP only, so it is handed one
        // that trusts nothing: no name server is ever reached over TLS.
        let no_tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
        let resolver = MessageAuthenticator(
            hickory_resolver::TokioResolver::builder_with_config(
                resolver_config,
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .with_options(opts)
            .with_tls_config(no_tls)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?,
        );
        Ok(Authenticator {
            inner: Arc::new(Inner {
                resolver,
                trusted_mx: config.auth.trusted_mx.clone(),
                internal_networks: config.auth.internal_networks.clone(),
                max_signatures: config.auth.max_signatures,
                budget: config.auth.time_budget,
                dns_timeout: config.dns.timeout,
                keys: KeyCache::default(),
            }),
        })
    }

    /// Authenticates one message. Never fails: every problem is a result.
    pub async fn authenticate(&self, raw: &[u8], inbound: &Inbound) -> Evidence {
        if let Some(a) = inbound.anomalies.first() {
            return Evidence::unchecked(&format!("not checked: {a}"));
        }
        let started = Instant::now();
        let deadline = started + self.inner.budget;
        let from = inbound.from_domain();
        // The DMARC record is informational: it runs beside the checks,
        // from the start, within one lookup's time of its own, and never
        // holds up the verdict.
        let dmarc_deadline = deadline.min(started + self.inner.dns_timeout);
        let dmarc = async {
            match from {
                Some(from) => self.dmarc_record(from, dmarc_deadline).await,
                None => (None, None),
            }
        };
        let (dkim, spf, (record, policy)) = tokio::join!(
            self.dkim(raw, from, deadline),
            self.spf(&inbound.received, inbound.return_path.as_ref(), deadline),
            dmarc
        );
        let mut evidence = Evidence::new(dkim, spf);
        if let Some(from) = from {
            evidence.dmarc.result = evidence::alignment(from, &evidence).dmarc_result();
            evidence.dmarc.record = record;
            evidence.dmarc.policy = policy;
        }
        evidence
    }

    /// Examines the message's DKIM signatures; the checks come back in the
    /// order of the signatures in the message.
    ///
    /// Policy refusals need no DNS. The keys of the rest are fetched
    /// concurrently, each lookup bounded by `dns.timeout`, and each
    /// signature is verified as soon as its key arrives; the first aligned
    /// signature that verifies ends the examination (what is still waiting
    /// is listed as not examined). Signatures aligned with the From domain
    /// are all examined, up to [`MAX_ALIGNED`]; the others fill the rest of
    /// `auth.max_signatures`, so bogus signatures cannot hide a genuine one.
    async fn dkim(
        &self,
        raw: &[u8],
        from: Option<&DomainName>,
        deadline: Instant,
    ) -> Vec<DkimCheck> {
        let Some(mut message) = AuthenticatedMessage::parse(raw) else {
            return Vec::new();
        };
        // Where each DKIM-Signature stands among the headers, so the checks
        // can be listed in the message's order whatever order they finish in.
        // (Header values are slices of `raw`, so their addresses tell them
        // apart.)
        let headers: Vec<usize> = message
            .headers
            .iter()
            .map(|(_, v)| v.as_ptr() as usize)
            .collect();
        let position = |value: &[u8]| {
            headers
                .iter()
                .position(|p| *p == value.as_ptr() as usize)
                .unwrap_or(usize::MAX)
        };
        let mut checks: Vec<(usize, DkimCheck)> = Vec::new();

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
            checks.push((
                position(e.value),
                DkimCheck {
                    domain,
                    selector,
                    algorithm,
                    result,
                    reason: Some(reason),
                    key_record: None,
                },
            ));
        }
        // Errors were reported above; mail-auth would report them again.
        message.errors.clear();

        // Refusals that need no key: rsa-sha1, and a signature that does
        // not cover the From header (RFC 6376 §6.1.1: whoever signed it did
        // not vouch for the author).
        let is_aligned = |s: &Signature| {
            from.zip(normalize_domain(&s.d))
                .is_some_and(|(f, d)| f.aligned_with(&d))
        };
        let mut pending = Vec::new();
        for h in message.dkim_headers.drain(..) {
            let pos = position(h.value);
            let refusal = if h.header.a == Algorithm::RsaSha1 {
                Some((AuthResult::Policy, "rsa-sha1 is not accepted (RFC 8301)"))
            } else if !h.header.h.iter().any(|n| n.eq_ignore_ascii_case("from")) {
                Some((
                    AuthResult::PermError,
                    "the From header is not signed (h=), so the signature is ignored (RFC 6376 §6.1.1)",
                ))
            } else if !is_key_name(&key_name(&h.header)) {
                // A name no lookup can ever answer (`d=police.gi.`, an
                // empty label): the signature is malformed, not the DNS
                // unlucky, and it must block the SPF path as any broken
                // aligned signature does rather than defer the message.
                Some((
                    AuthResult::PermError,
                    "d= and s= do not make a valid key name (RFC 6376 §3.5, §6.1.1)",
                ))
            } else {
                None
            };
            match refusal {
                Some((result, reason)) => {
                    checks.push((pos, unexamined(&h.header, result, reason.to_string())))
                }
                None => pending.push(Pending {
                    pos,
                    aligned: is_aligned(&h.header),
                    header: h,
                }),
            }
        }

        // Aligned first, each group in message order; then the cap.
        pending.sort_by_key(|p| (!p.aligned, p.pos));
        let aligned = pending.iter().filter(|p| p.aligned).count();
        let examined = aligned
            .min(MAX_ALIGNED)
            .max(self.inner.max_signatures)
            .min(pending.len());
        for p in pending.drain(examined..) {
            let reason = if p.aligned {
                format!("not examined: more than {MAX_ALIGNED} aligned signatures")
            } else {
                format!(
                    "not examined: more than {} signatures",
                    self.inner.max_signatures
                )
            };
            checks.push((
                p.pos,
                unexamined(&p.header.header, AuthResult::None, reason),
            ));
        }

        // One lookup per key name, all at once; signatures are verified
        // as their keys arrive.
        let mut waiting: HashMap<String, Vec<Pending>> = HashMap::new();
        let mut names = Vec::new();
        for p in pending {
            let name = key_name(&p.header.header);
            if !waiting.contains_key(&name) {
                names.push(name.clone());
            }
            waiting.entry(name).or_default().push(p);
        }
        let lookups = futures_util::stream::iter(names)
            .map(|name| async move {
                let key = self.key(&name, deadline).await;
                (name, key)
            })
            .buffer_unordered(MAX_ALIGNED);
        let mut passed = false;
        let examine = async {
            futures_util::pin_mut!(lookups);
            while let Some((name, key)) = lookups.next().await {
                for p in waiting.remove(&name).unwrap_or_default() {
                    let check = self.verify(&mut message, p.header, &name, &key).await;
                    passed |= p.aligned && check.result == AuthResult::Pass;
                    checks.push((p.pos, check));
                }
                if passed {
                    break;
                }
            }
        };
        let in_time = tokio::time::timeout_at(deadline.into(), examine)
            .await
            .is_ok();
        let (result, reason) = if passed {
            (
                AuthResult::None,
                "not examined: an aligned signature had already verified",
            )
        } else if in_time {
            (AuthResult::TempError, "not examined")
        } else {
            (
                AuthResult::TempError,
                "time budget for this message exhausted",
            )
        };
        for p in waiting.into_values().flatten() {
            checks.push((
                p.pos,
                unexamined(&p.header.header, result, reason.to_string()),
            ));
        }
        checks.sort_by_key(|(pos, _)| *pos);
        checks.into_iter().map(|(_, c)| c).collect()
    }

    /// Fetches and reads the key record at `name`: the TXT record that
    /// parses as a DKIM key (a name may hold other TXT records too).
    async fn key(&self, name: &str, deadline: Instant) -> KeyLookup {
        let refused = |result, reason: String, record| KeyLookup::Refused {
            result,
            reason,
            record,
        };
        // One lookup's time, within what is left of the message's budget.
        let until = deadline.min(Instant::now() + self.inner.dns_timeout);
        let records = match self.txt(name, until).await {
            Err(_) if Instant::now() >= deadline => {
                return refused(
                    AuthResult::TempError,
                    "time budget for this message exhausted".to_string(),
                    None,
                );
            }
            Err(e) => {
                return refused(
                    AuthResult::TempError,
                    format!("DNS lookup of the key failed ({e})"),
                    None,
                );
            }
            Ok(records) if records.is_empty() => {
                return refused(
                    AuthResult::PermError,
                    "no key record published".to_string(),
                    None,
                );
            }
            Ok(records) => records,
        };
        let mut revoked = None;
        let mut invalid = None;
        for record in records {
            match self.inner.keys.read(&record) {
                Ok(key) => return KeyLookup::Found(key),
                Err(AuthError::Dkim(DkimError::RevokedPublicKey)) => {
                    revoked.get_or_insert(record);
                }
                Err(_) if looks_like_key(&record) => {
                    invalid.get_or_insert(record);
                }
                Err(_) => {}
            }
        }
        match (revoked, invalid) {
            (Some(record), _) => refused(
                AuthResult::Fail,
                "key revoked (empty p=)".to_string(),
                Some(record),
            ),
            (None, Some(record)) => refused(
                AuthResult::PermError,
                "key record is not a valid DKIM key".to_string(),
                Some(record),
            ),
            (None, None) => refused(
                AuthResult::PermError,
                "no DKIM key among the TXT records at the key's name".to_string(),
                None,
            ),
        }
    }

    /// Verifies one signature against its fetched key, after the key's own
    /// restrictions (RFC 6376 §3.6.1) and the size rule.
    async fn verify<'x>(
        &self,
        message: &mut AuthenticatedMessage<'x>,
        header: mail_auth::common::headers::Header<'x, Signature>,
        name: &str,
        key: &KeyLookup,
    ) -> DkimCheck {
        let sig = &header.header;
        let key = match key {
            KeyLookup::Refused {
                result,
                reason,
                record,
            } => {
                return DkimCheck {
                    key_record: record.clone(),
                    ..unexamined(sig, *result, reason.clone())
                };
            }
            KeyLookup::Found(key) => key,
        };
        let with_key = |result, reason: &str| DkimCheck {
            key_record: Some(key.record.clone()),
            ..unexamined(sig, result, reason.to_string())
        };
        if key.flags.testing {
            return with_key(
                AuthResult::None,
                "key is in testing mode (t=y): treated as unsigned (RFC 6376 §3.6.1)",
            );
        }
        if !key.flags.for_email {
            return with_key(
                AuthResult::PermError,
                "key is not for e-mail (s= names neither email nor *)",
            );
        }
        if !key.flags.allows_sha256 {
            return with_key(
                AuthResult::PermError,
                "key does not allow the signature's hash (h= without sha256)",
            );
        }
        if sig.a == Algorithm::RsaSha256 {
            let bits = key.key.p.public_key_bits();
            if (1..MIN_RSA_BITS).contains(&bits) {
                return with_key(
                    AuthResult::Policy,
                    &format!("RSA key of {bits} bits is too short (RFC 8301)"),
                );
            }
        }
        let mut check = with_key(AuthResult::None, "");
        let cache = OneKey {
            name: name.into(),
            key: Txt::DomainKey(key.key.clone()),
        };
        message.dkim_headers = vec![header];
        let outputs = self
            .inner
            .resolver
            .verify_dkim(Parameters::new(&*message).with_txt_cache(&cache))
            .await;
        (check.result, check.reason) = outputs.first().map_or_else(
            || (AuthResult::PermError, Some("not verified".to_string())),
            |o| dkim_result(o.result()),
        );
        check
    }

    /// The first `Received` line that the policy accepts as evidence: added
    /// by a trusted MX, over SMTP, from a client outside the internal
    /// networks; or the first other line of a trusted MX that is not an
    /// LMTP hand-off or an internal relay's, which then gives no evidence
    /// (a line that cannot be read strictly, see `received`, or one that
    /// records no SMTP transfer). Lines below it were written by the
    /// sender's side and are not looked at.
    pub fn trusted_hop<'a>(&self, hops: &'a [Hop]) -> Option<&'a Hop> {
        hops.iter().find(|h| {
            h.is_by(&self.inner.trusted_mx)
                // The hand-off to the mailbox server is passed over: it was
                // written above the MX's own line, by the host itself.
                && !h.is_lmtp()
                // So is a relay's line from an internal network.
                && !(h.problem.is_none()
                    && h.is_smtp()
                    && h.ip.is_some_and(|ip| {
                        self.inner.internal_networks.iter().any(|n| n.contains(&ip))
                    }))
            // Any other line of the trusted MX is where the search stops,
            // whatever its protocol word: passing over a line the policy
            // does not know would hand the choice to the lines below, which
            // the sender may have written.
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
        if let Some(problem) = &hop.problem {
            check.reason = Some(format!(
                "the trusted Received line cannot be read as evidence: {problem}"
            ));
            return check;
        }
        if !hop.is_smtp() {
            check.reason = Some(format!(
                "the trusted Received line records no SMTP transfer (with {}): no evidence",
                hop.with.as_deref().unwrap_or("nothing")
            ));
            return check;
        }
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
        let dns = spf::Dns::Hickory(self.inner.resolver.resolver());
        let input = spf::Input {
            ip,
            sender,
            helo,
            receiver: host,
            domain: domain.as_str(),
        };
        let evaluated = spf::check_host(&dns, &input, deadline);
        let Ok(outcome) = tokio::time::timeout_at(deadline.into(), evaluated).await else {
            check.result = AuthResult::TempError;
            check.reason = Some("time budget for this message exhausted".into());
            return check;
        };
        tracing::debug!(
            domain = %domain,
            %ip,
            result = outcome.result.as_str(),
            detail = %outcome.detail,
            "SPF evaluated"
        );
        check.result = spf_result(outcome.result);
        check.reason = match check.result {
            AuthResult::Pass => None,
            other => Some(format!("SPF {} for {ip} in {domain}", other.as_str())),
        };
        check.record = outcome.record;
        check
    }

    /// The DMARC record of the From domain, or of its organizational
    /// domain (RFC 7489 §6.6.3); informational only.
    async fn dmarc_record(
        &self,
        from: &DomainName,
        deadline: Instant,
    ) -> (Option<String>, Option<String>) {
        let org = from.organizational();
        let lookup = |name: String| async move {
            self.txt(&format!("_dmarc.{name}."), deadline)
                .await
                .ok()
                .and_then(|records| {
                    records
                        .into_iter()
                        .find(|r| r.to_ascii_lowercase().starts_with("v=dmarc1"))
                })
        };
        let (own, inherited) = if org != from.as_str() {
            tokio::join!(lookup(from.as_str().to_string()), async {
                lookup(org.to_string()).await
            })
        } else {
            (lookup(from.as_str().to_string()).await, None)
        };
        let Some(r) = own.or(inherited) else {
            return (None, None);
        };
        let policy = r
            .split(';')
            .filter_map(|t| t.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("p"))
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        (Some(r), policy)
    }

    /// The TXT records of `name`, each record's strings joined; an empty
    /// list when the name has none (NXDOMAIN, NODATA); an error saying
    /// why when the resolver could not find out.
    pub async fn txt(&self, name: &str, deadline: Instant) -> Result<Vec<String>, String> {
        // Relaxed: an underscore inside a label (a selector such as
        // `sel_1`) is a name DNS serves, though not a host name.
        let name = hickory_resolver::proto::rr::Name::from_str_relaxed(name)
            .map_err(|e| crate::text::clean(&e.to_string(), 200))?;
        let lookup = self.inner.resolver.resolver().txt_lookup(name);
        let lookup = match tokio::time::timeout_at(deadline.into(), lookup).await {
            Err(_) => return Err("no answer in time".to_string()),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(crate::text::clean(&e.to_string(), 200)),
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

/// Aligned signatures examined at most, and key lookups in flight at once:
/// enough that dozens of never-answering keys cost one lookup's timeout.
const MAX_ALIGNED: usize = 64;

/// A signature waiting for its key.
struct Pending<'x> {
    /// Its place among the message's headers.
    pos: usize,
    aligned: bool,
    header: Header<'x, Signature>,
}

/// What the key lookup of one name gave.
enum KeyLookup {
    Found(Arc<Key>),
    Refused {
        result: AuthResult,
        reason: String,
        record: Option<String>,
    },
}

/// A key record that parses as a DKIM key, as fetched, and what it says.
struct Key {
    record: String,
    key: Arc<DomainKey>,
    flags: KeyFlags,
}

/// Key records already read, by their text, so that a sender's key is
/// read once rather than for every message it signs: mail-auth hands
/// aws-lc the key's bytes at each verification, and aws-lc parses the RSA
/// modulus and computes its Montgomery constants each time, a tenth of a
/// message's DKIM work (scripts/bench-verify). Bounded: emptied when full,
/// so a sender publishing many keys costs only the parsing it always did.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<String, Arc<Key>>>);

/// Key records kept by [`KeyCache`].
const KEY_CACHE: usize = 256;

impl KeyCache {
    /// The record read as mail-auth reads it, with an RSA key parsed once
    /// (see [`ParsedRsa`]), and its restrictions.
    fn read(&self, record: &str) -> Result<Arc<Key>, AuthError> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(key) = lock().get(record) {
            return Ok(key.clone());
        }
        let mut key = DomainKey::parse(record.as_bytes())?;
        // mail-auth's Ed25519 keys report no size; only its RSA keys are
        // replaced.
        let bits = key.p.public_key_bits();
        if bits != usize::MAX
            && let Some(parsed) = ParsedRsa::read(record, bits)
        {
            key.p = Box::new(parsed);
        }
        let key = Arc::new(Key {
            record: record.to_string(),
            key: Arc::new(key),
            flags: KeyFlags::read(record),
        });
        let mut keys = lock();
        if keys.len() >= KEY_CACHE {
            keys.clear();
        }
        keys.insert(record.to_string(), key.clone());
        Ok(key)
    }
}

/// An RSA key parsed once by aws-lc, verifying exactly as mail-auth's own
/// key does (the same header canonicalisation, the same aws-lc algorithm
/// and key parser, handed the same bytes), without parsing the key again
/// for every signature. Only rsa-sha256, the one RSA algorithm that gets
/// this far (rsa-sha1 is refused before any key is fetched).
struct ParsedRsa {
    key: ParsedPublicKey,
    bits: usize,
}

impl ParsedRsa {
    /// The record's `p=` key when the record is an RSA key (`k=` absent or
    /// `rsa`) whose base64 and DER aws-lc reads; `None` leaves mail-auth's
    /// own key in place, which then fails or passes as it always did.
    fn read(record: &str, bits: usize) -> Option<ParsedRsa> {
        let mut p = None;
        for (name, value) in key_tags(record) {
            match name {
                "k" if !value.trim().eq_ignore_ascii_case("rsa") => return None,
                "p" => p = Some(value),
                _ => {}
            }
        }
        let base64: Vec<u8> = p?.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let der = data_encoding::BASE64.decode(&base64).ok()?;
        let key = ParsedPublicKey::new(
            &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            spki_stripped(&der).unwrap_or(&der),
        )
        .ok()?;
        Some(ParsedRsa { key, bits })
    }
}

/// The RSAPublicKey inside a SubjectPublicKeyInfo, found the way mail-auth
/// finds it (an algorithm identifier of 13 bytes, then the bit string), so
/// that aws-lc is handed what mail-auth would hand it; `None` when `der`
/// is not laid out so (mail-auth then passes it on whole, and so do we).
fn spki_stripped(der: &[u8]) -> Option<&[u8]> {
    /// A DER length and what follows it.
    fn length(bytes: &[u8]) -> Option<(usize, &[u8])> {
        let first = *bytes.first()?;
        if first & 0x80 == 0 {
            return Some((usize::from(first), &bytes[1..]));
        }
        let n = usize::from(first & 0x7f);
        let digits = bytes.get(1..=n)?;
        let len = digits
            .iter()
            .fold(0usize, |len, d| (len << 8) | usize::from(*d));
        Some((len, &bytes[n + 1..]))
    }
    const SEQUENCE: u8 = 0x30;
    const OBJECT_ID: u8 = 0x06;
    const BIT_STRING: u8 = 0x03;
    let rest = der.strip_prefix(&[SEQUENCE])?;
    let (_, rest) = length(rest)?;
    let rest = rest.strip_prefix(&[SEQUENCE])?;
    let (algorithm_len, rest) = length(rest)?;
    if algorithm_len != 13 || rest.first() != Some(&OBJECT_ID) {
        return None;
    }
    let rest = rest.get(13..)?.strip_prefix(&[BIT_STRING])?;
    // After the length, the count of unused bits.
    length(rest).and_then(|(_, bits)| bits.get(1..))
}

impl VerifyingKey for ParsedRsa {
    fn verify<'a>(
        &self,
        headers: &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>,
        signature: &[u8],
        canonicalization: mail_auth::dkim::Canonicalization,
        algorithm: Algorithm,
    ) -> mail_auth::Result<()> {
        let mut data = Vec::with_capacity(256);
        canonicalization.canonicalize_headers(headers, &mut data);
        self.verify_bytes(&data, signature, algorithm)
    }

    fn verify_bytes(
        &self,
        input: &[u8],
        signature: &[u8],
        algorithm: Algorithm,
    ) -> mail_auth::Result<()> {
        use mail_auth::common::crypto::CryptoError;
        match algorithm {
            Algorithm::RsaSha256 => self
                .key
                .verify_sig(input, signature)
                .map_err(|_| AuthError::Crypto(CryptoError::FailedVerification)),
            // rsa-sha1 is never accepted (RFC 8301); an Ed25519 signature
            // cannot be checked with an RSA key.
            _ => Err(AuthError::Crypto(CryptoError::IncompatibleAlgorithms)),
        }
    }

    fn public_key_bits(&self) -> usize {
        self.bits
    }
}

/// The key record's restrictions on its own use (RFC 6376 §3.6.1).
#[derive(Debug, PartialEq, Eq)]
struct KeyFlags {
    /// `t=y`: the domain is testing DKIM; verifiers treat the mail as
    /// unsigned.
    testing: bool,
    /// `s=` absent, or naming `email` or `*`.
    for_email: bool,
    /// `h=` absent, or naming `sha256`.
    allows_sha256: bool,
}

impl KeyFlags {
    fn read(record: &str) -> KeyFlags {
        let mut flags = KeyFlags {
            testing: false,
            for_email: true,
            allows_sha256: true,
        };
        for (name, value) in key_tags(record) {
            let mut items = value.split(':').map(|i| {
                i.chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_ascii_lowercase()
            });
            match name {
                "t" => flags.testing = items.any(|i| i == "y"),
                "s" => flags.for_email = items.any(|i| i == "email" || i == "*"),
                "h" => flags.allows_sha256 = items.any(|i| i == "sha256"),
                _ => {}
            }
        }
        flags
    }
}

/// A key record's tags (RFC 6376 §3.6.1): the name trimmed, the value as
/// written. Tag names are case-sensitive (§3.2).
fn key_tags(record: &str) -> impl Iterator<Item = (&str, &str)> {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .map(|(name, value)| (name.trim(), value))
}

/// A TXT record that claims to be a DKIM key, valid or not.
fn looks_like_key(record: &str) -> bool {
    let r = record.trim_start();
    r.starts_with("v=DKIM1") || r.split(';').any(|t| t.trim_start().starts_with("p="))
}

/// The name of a signature's key record, as mail-auth asks for it.
fn key_name(sig: &Signature) -> String {
    format!("{}._domainkey.{}.", sig.s, sig.d)
}

/// Whether `name` (absolute, as [`key_name`] writes it) is a DNS name a
/// lookup can ask for: labels of 1 to 63 bytes of letters, digits, `-` and
/// `_` (selectors use it), 253 bytes at most; non-ASCII labels as hickory
/// reads them (IDNA).
fn is_key_name(name: &str) -> bool {
    let Some(name) = name.strip_suffix('.') else {
        return false;
    };
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || !b.is_ascii())
        })
        && hickory_resolver::proto::rr::Name::from_str_relaxed(name).is_ok()
}

/// A check of `sig` with no key involved.
fn unexamined(sig: &Signature, result: AuthResult, reason: String) -> DkimCheck {
    DkimCheck {
        domain: sig.d.to_ascii_lowercase(),
        selector: sig.s.clone(),
        algorithm: algorithm_name(sig.a),
        result,
        reason: (!reason.is_empty()).then_some(reason),
        key_record: None,
    }
}

/// mail-auth's view of DNS while one signature is verified: its key,
/// already fetched and checked, and nothing else (any other name is
/// absent), so verification itself never touches the network.
struct OneKey {
    name: Box<str>,
    key: Txt,
}

impl ResolverCache<Box<str>, Txt> for OneKey {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Some(if <Box<str> as Borrow<Q>>::borrow(&self.name) == name {
            self.key.clone()
        } else {
            Txt::Error(AuthError::Dns(DnsError::RecordNotFound(
                ResponseCode::NXDomain,
            )))
        })
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
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
                "d" => d = crate::text::clean(&v.to_ascii_lowercase(), 253),
                "s" => s = crate::text::clean(&v, 63),
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
        other => crate::text::clean(&other.to_string(), 200),
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
    fn key_restrictions_are_read_from_the_record() {
        let flags = |r| KeyFlags::read(r);
        let open = KeyFlags {
            testing: false,
            for_email: true,
            allows_sha256: true,
        };
        assert_eq!(flags("v=DKIM1; k=rsa; p=AB"), open);
        assert!(flags("v=DKIM1; t=s:y; p=AB").testing);
        assert!(!flags("v=DKIM1; t=s; p=AB").testing);
        // Tag names are case-sensitive: `T=y` is an unknown tag.
        assert!(!flags("v=DKIM1; T=y; p=AB").testing);
        assert!(flags("v=DKIM1; s=email; p=AB").for_email);
        assert!(flags("v=DKIM1; s = * ; p=AB").for_email);
        assert!(!flags("v=DKIM1; s=tlsrpt; p=AB").for_email);
        assert!(flags("v=DKIM1; h=sha1:SHA256; p=AB").allows_sha256);
        assert!(!flags("v=DKIM1; h=sha1; p=AB").allows_sha256);
        assert!(looks_like_key("v=DKIM1; p="));
        assert!(looks_like_key("k=rsa; p=AB"));
        assert!(!looks_like_key("site-verification=0123"));
    }

    /// A message signed with `key` by police.gi.
    fn signed(key: &testkit::dkim::TestKey, body: &str) -> Vec<u8> {
        let message = format!(
            "From: officer@police.gi\r\nTo: legal@ivpn.net\r\nSubject: Order\r\n\r\n{body}\r\n"
        );
        testkit::dkim::sign(
            message.as_bytes(),
            key,
            &testkit::dkim::SignOptions::new("police.gi", "s1"),
        )
    }

    /// What mail-auth's verification says of the message's one signature
    /// with `key` published for it.
    fn verified(raw: &[u8], key: DomainKey) -> DkimResult {
        let message = AuthenticatedMessage::parse(raw).expect("parses");
        let cache = OneKey {
            name: "s1._domainkey.police.gi.".into(),
            key: Txt::DomainKey(Arc::new(key)),
        };
        // Never asked: the key is in the cache.
        let verifier = MessageAuthenticator::new(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![]),
            ResolverOpts::default(),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outputs = runtime
            .block_on(verifier.verify_dkim(Parameters::new(&message).with_txt_cache(&cache)));
        assert_eq!(outputs.len(), 1);
        outputs[0].result().clone()
    }

    #[test]
    fn a_parsed_rsa_key_verifies_as_mail_auths_own_does() {
        let key = testkit::dkim::generate(testkit::dkim::KeyKind::Rsa(2048));
        let good = signed(&key, "Production order for account 4711.");
        // A signed header changed: the body hash still matches, so the
        // key's verification is what refuses it.
        let text = String::from_utf8(good.clone()).unwrap();
        let forged = text
            .replace("Subject: Order", "Subject: Ordex")
            .into_bytes();
        assert_ne!(forged, good);
        // The SubjectPublicKeyInfo the record publishes, and the bare
        // RSAPublicKey some publishers use instead.
        let spki = data_encoding::BASE64
            .decode(key.public_key_base64().as_bytes())
            .unwrap();
        let pkcs1 = spki_stripped(&spki)
            .expect("an RSA SubjectPublicKeyInfo")
            .to_vec();
        assert_ne!(pkcs1, spki);
        for der in [spki, pkcs1] {
            let record = format!("v=DKIM1; k=rsa; p={}", data_encoding::BASE64.encode(&der));
            let theirs = || DomainKey::parse(record.as_bytes()).unwrap();
            let bits = theirs().p.public_key_bits();
            assert_eq!(bits, 2048);
            let ours = || DomainKey {
                p: Box::new(ParsedRsa::read(&record, bits).expect("an RSA key")),
                f: 0,
            };
            for raw in [&good, &forged] {
                assert_eq!(verified(raw, ours()), verified(raw, theirs()));
            }
            assert_eq!(verified(&good, ours()), DkimResult::Pass);
            assert!(matches!(verified(&forged, ours()), DkimResult::Fail(_)));
            assert_eq!(ours().p.public_key_bits(), 2048);
        }
    }

    #[test]
    fn keys_not_read_as_rsa_are_left_to_mail_auth() {
        let rsa = testkit::dkim::generate(testkit::dkim::KeyKind::Rsa(2048));
        let p = rsa.public_key_base64();
        assert!(ParsedRsa::read(&format!("v=DKIM1; p={p}"), 2048).is_some());
        assert!(ParsedRsa::read(&format!("v=DKIM1; k=ed25519; p={p}"), 2048).is_none());
        // Folded base64 is read; broken base64 or DER is mail-auth's to fail.
        let folded = format!("v=DKIM1; k=rsa; p={} {}", &p[..40], &p[40..]);
        assert!(ParsedRsa::read(&folded, 2048).is_some());
        assert!(ParsedRsa::read(&format!("v=DKIM1; p={}", &p[1..]), 2048).is_none());
        assert!(ParsedRsa::read("v=DKIM1; p=AAAA", 2048).is_none());
        assert!(ParsedRsa::read("v=DKIM1; k=rsa", 2048).is_none());

        // An Ed25519 record keeps mail-auth's key; the cache returns the
        // same key for the same record, and reads a new record anew.
        let ed = testkit::dkim::generate(testkit::dkim::KeyKind::Ed25519);
        let cache = KeyCache::default();
        let a = cache.read(&ed.dns_txt).unwrap();
        assert_eq!(a.key.p.public_key_bits(), usize::MAX);
        assert!(Arc::ptr_eq(&a, &cache.read(&ed.dns_txt).unwrap()));
        let b = cache.read(&rsa.dns_txt).unwrap();
        assert_eq!(b.key.p.public_key_bits(), 2048);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(matches!(
            cache.read("v=DKIM1; p="),
            Err(AuthError::Dkim(DkimError::RevokedPublicKey))
        ));
    }

    #[test]
    fn the_key_cache_is_bounded() {
        let key = testkit::dkim::generate(testkit::dkim::KeyKind::Rsa(2048));
        let cache = KeyCache::default();
        for n in 0..KEY_CACHE + 10 {
            // Distinct records, one key.
            cache.read(&format!("{}; n={n}", key.dns_txt)).unwrap();
        }
        assert!(cache.0.lock().unwrap().len() <= KEY_CACHE);
    }

    #[test]
    fn key_names_are_checked_before_any_lookup() {
        assert!(is_key_name("s2026._domainkey.police.gi."));
        assert!(is_key_name("sel_1._domainkey.cid.police.gi."));
        assert!(is_key_name("s1._domainkey.xn--plice-jua.gi."));
        for bad in [
            "s1._domainkey.police.gi..",
            "s1.._domainkey.police.gi.",
            "._domainkey.police.gi.",
            "s1._domainkey.police gi.",
            "s1._domainkey.police.gi;x.",
            "s1._domainkey.police.gi",
        ] {
            assert!(!is_key_name(bad), "{bad}");
        }
        let long = format!("s1._domainkey.{}.gi.", "a".repeat(64));
        assert!(!is_key_name(&long));
    }

    #[test]
    fn tags_are_read_from_unparseable_signatures() {
        let (d, s, a) = tags(b" v=1; a=rsa-sha256; d=Police.GI;\r\n s=s2026; l=10; bh=x; b=y");
        assert_eq!(
            (d.as_str(), s.as_str(), a),
            ("police.gi", "s2026", "rsa-sha256")
        );
    }
}
