//! Edge: SPF, RFC 7208 `check_host()`, evaluated strictly → [`Outcome`].
//!
//! The policy rests on SPF only where a domain's own DNS says who may send
//! for it, so a record that is not what RFC 7208 allows must never read as
//! `pass`. This evaluator therefore checks the whole record against the
//! ABNF (RFC 7208 §4.6.1, §5, §6, §7.1, appendix A) before any mechanism is
//! evaluated, and any deviation is a `permerror`:
//! - terms are separated by SP only; any other control character, and any
//!   non-ASCII byte (§3.1), is an error;
//! - CIDR lengths have no leading zeros and stay within 32 (IPv4) and 128
//!   (IPv6); `ip4:` takes a dotted quad without leading zeros, and no IPv6
//!   length; `a` and `mx` take `/n`, `//n` or `/n//n` and nothing else;
//! - a domain-spec ends in a toplabel with a letter (or of the
//!   `alnum-…-alnum` form), or in a macro (§7.1), so `a:111.222.33.44`,
//!   `a:museum` or `a:example.com:8080` are errors, not lookups;
//! - macros are `%{letter digits r delimiters}`, `%%`, `%_` and `%-`; the
//!   letters `c`, `r` and `t` belong to explanations only, and a zero digit
//!   transformer is an error;
//! - modifier names follow appendix A (`ALPHA *(ALPHA / DIGIT / - / _ / .)`),
//!   `redirect` and `exp` each appear at most once and take a valid
//!   domain-spec; unknown modifiers need a valid macro-string and are then
//!   ignored. The explanation itself is never fetched: the product does not
//!   report it.
//!
//! Evaluation follows §4 and §5: exactly one `v=spf1` TXT record (several:
//! `permerror`, none: `none`); at most 10 DNS-querying terms (`include`,
//! `a`, `mx`, `ptr`, `exists`, `redirect`) per check, counted as they are
//! evaluated, across includes and redirects; at most two void lookups (a
//! term whose own query — the A/AAAA of `a`, the MX of `mx`, the PTR of
//! `ptr`, the A of `exists` — answers NXDOMAIN or no records); an `mx`
//! whose name has more than 10 MX records is a `permerror`, and `ptr` and
//! `%{p}` look at the first 10 PTR names only. NXDOMAIN and NODATA are
//! "no records"; SERVFAIL, any other error and a timeout are a `temperror`,
//! except where §5.5 says the name is skipped (PTR names that do not
//! validate). A target that cannot be a DNS name (an empty or >63-byte
//! label, >253 bytes after the truncation of §7.3) does not match, as §4.3
//! reads for the initial domain; an `include` or `redirect` to such a name
//! is a `permerror`.
//!
//! The client address is evaluated as IPv4 when it is an IPv4-mapped IPv6
//! address (§5), so `ip6` never matches it; `%{i}` of an IPv6 client is its
//! 32 nibbles, dotted. DNS goes through [`Dns`]: the authenticator's hickory
//! resolver, or an in-memory [`Zone`] for tests.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::hickory_resolver::TokioResolver;
use crate::hickory_resolver::net::{DnsError, NetError, NoRecords};
use crate::hickory_resolver::proto::op::ResponseCode;
use crate::hickory_resolver::proto::rr::{Name, RData, RecordType};

/// DNS-querying terms allowed in one check (RFC 7208 §4.6.4).
const MAX_DNS_TERMS: usize = 10;

/// Void lookups allowed in one check (RFC 7208 §4.6.4).
const MAX_VOID_LOOKUPS: usize = 2;

/// MX records one `mx` may look at, and PTR names one `ptr` or `%{p}` may
/// validate (RFC 7208 §4.6.4).
const MAX_NAMES_PER_LOOKUP: usize = 10;

/// The longest domain name in text form, without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// The result of `check_host()` (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

/// What `check_host()` is asked about (RFC 7208 §4.1).
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The SMTP client's address.
    pub ip: IpAddr,
    /// The envelope sender, `local@domain` (`postmaster@HELO` for a null
    /// path); an empty local part reads as `postmaster` (§4.3).
    pub sender: &'a str,
    /// The HELO/EHLO name (`%{h}`).
    pub helo: &'a str,
    /// The receiving host's name (`%{r}`).
    pub receiver: &'a str,
    /// The domain whose policy is evaluated (the sender's, validated).
    pub domain: &'a str,
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: SpfResult,
    /// What decided it: the matching term, or what was wrong.
    pub detail: String,
    /// The `v=spf1` record of the checked domain itself, as fetched (the
    /// first one when there are several); none when the domain has none or
    /// its lookup failed.
    pub record: Option<String>,
}

/// Evaluates RFC 7208 `check_host(ip, domain, sender)`; every DNS query is
/// bounded by `deadline`, and running out of time is a `temperror`.
pub async fn check_host(dns: &Dns<'_>, input: &Input<'_>, deadline: Instant) -> Outcome {
    let (local, sender_domain) = match input.sender.rsplit_once('@') {
        Some((local, domain)) => (local, domain),
        None => ("", input.sender),
    };
    let local = if local.is_empty() {
        "postmaster"
    } else {
        local
    };
    let mut eval = Eval {
        dns,
        ip: unmapped(input.ip),
        sender: format!("{local}@{sender_domain}"),
        local,
        sender_domain,
        helo: input.helo,
        receiver: input.receiver,
        deadline,
        dns_terms: 0,
        voids: 0,
        ptr_names: None,
        validated: HashMap::new(),
        record: None,
        decided_by: String::new(),
    };
    let result = eval.check_host(input.domain.to_string(), true).await;
    let (result, detail) = match result {
        Ok(r) => (r, std::mem::take(&mut eval.decided_by)),
        Err(Stop::Perm(why)) => (SpfResult::PermError, why),
        Err(Stop::Temp(why)) => (SpfResult::TempError, why),
    };
    Outcome {
        result,
        detail,
        record: eval.record,
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

// ---------------------------------------------------------------------------
// DNS

/// Where the evaluator's DNS answers come from.
pub enum Dns<'r> {
    /// The authenticator's resolver (shared with DKIM, so one cache).
    Hickory(&'r TokioResolver),
    /// A fixed in-memory zone: every name not in it has no records.
    Fixed(Zone),
}

/// The record types `check_host()` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Txt,
    A,
    Aaaa,
    Mx,
    Ptr,
}

impl Kind {
    fn record_type(self) -> RecordType {
        match self {
            Kind::Txt => RecordType::TXT,
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Mx => RecordType::MX,
            Kind::Ptr => RecordType::PTR,
        }
    }
}

/// One answer record, reduced to what SPF uses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rr {
    /// A TXT record's character-strings, concatenated (§3.3).
    Txt(Vec<u8>),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// An MX exchange or PTR target, lowercase, without the trailing dot
    /// (empty for the root, as in a null MX).
    Name(String),
}

/// An in-memory zone for tests. Names are case-insensitive; a name that is
/// not in the zone answers as NXDOMAIN.
#[derive(Debug, Default)]
pub struct Zone {
    records: HashMap<(String, Kind), Vec<Rr>>,
    /// Names that answer SERVFAIL, whatever the type.
    failing: HashSet<String>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds a TXT record of one character-string.
    pub fn txt(self, name: &str, text: &str) -> Zone {
        self.with(name, Kind::Txt, Rr::Txt(text.as_bytes().to_vec()))
    }

    pub fn a(self, name: &str, ip: Ipv4Addr) -> Zone {
        self.with(name, Kind::A, Rr::A(ip))
    }

    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Zone {
        self.with(name, Kind::Aaaa, Rr::Aaaa(ip))
    }

    pub fn mx(self, name: &str, exchange: &str) -> Zone {
        self.with(name, Kind::Mx, Rr::Name(zone_key(exchange)))
    }

    /// Adds a PTR record; `name` is the reverse name (`4.3.2.1.in-addr.arpa`).
    pub fn ptr(self, name: &str, target: &str) -> Zone {
        self.with(name, Kind::Ptr, Rr::Name(zone_key(target)))
    }

    /// Makes every query for `name` answer SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.failing.insert(zone_key(name));
        self
    }

    fn with(mut self, name: &str, kind: Kind, rr: Rr) -> Zone {
        self.records
            .entry((zone_key(name), kind))
            .or_default()
            .push(rr);
        self
    }
}

fn zone_key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl Dns<'_> {
    /// The records of `kind` at `name` (a valid DNS name, see
    /// [`dns_name`]): empty for NXDOMAIN and NODATA, an error saying why
    /// for anything else (SERVFAIL, timeout).
    async fn lookup(&self, name: &str, kind: Kind, deadline: Instant) -> Result<Vec<Rr>, String> {
        match self {
            Dns::Fixed(zone) => {
                let key = zone_key(name);
                if zone.failing.contains(&key) {
                    return Err(format!("SERVFAIL for {name}"));
                }
                Ok(zone.records.get(&(key, kind)).cloned().unwrap_or_default())
            }
            Dns::Hickory(resolver) => {
                // Labels go out as raw bytes: RFC 2181 §11 allows any, and
                // a domain-spec may hold any visible character.
                let query = Name::from_labels(name.split('.').map(str::as_bytes))
                    .map_err(|e| format!("cannot query {name}: {e}"))?;
                let lookup = resolver.lookup(query, kind.record_type());
                match tokio::time::timeout_at(deadline.into(), lookup).await {
                    Err(_) => Err(format!("no answer in time for {name}")),
                    Ok(Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                        response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                        ..
                    })))) => Ok(Vec::new()),
                    Ok(Err(e)) => Err(crate::text::clean(
                        &format!("DNS error for {name}: {e}"),
                        200,
                    )),
                    Ok(Ok(lookup)) => Ok(lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match (&r.data, kind) {
                            (RData::TXT(txt), Kind::Txt) => Some(Rr::Txt(txt.txt_data.concat())),
                            (RData::A(a), Kind::A) => Some(Rr::A(a.0)),
                            (RData::AAAA(a), Kind::Aaaa) => Some(Rr::Aaaa(a.0)),
                            (RData::MX(mx), Kind::Mx) => Some(Rr::Name(name_text(&mx.exchange))),
                            (RData::PTR(ptr), Kind::Ptr) => Some(Rr::Name(name_text(&ptr.0))),
                            _ => None,
                        })
                        .collect()),
                }
            }
        }
    }
}

/// A name from an answer as text: its labels, lowercase, joined by dots.
fn name_text(name: &Name) -> String {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

/// `name` (one trailing dot allowed) when it can be queried: not empty, no
/// empty label, no label over 63 bytes, at most 253 bytes.
fn dns_name(name: &str) -> Option<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN);
    valid.then_some(name)
}

// ---------------------------------------------------------------------------
// Evaluation

/// Why evaluation stopped before a result was reached.
#[derive(Debug)]
enum Stop {
    Perm(String),
    Temp(String),
}

type Step<'s, T> = Pin<Box<dyn Future<Output = Result<T, Stop>> + Send + 's>>;

/// The state of one check, shared by its includes and redirects.
struct Eval<'a> {
    dns: &'a Dns<'a>,
    /// The client, IPv4 when it was IPv4-mapped.
    ip: IpAddr,
    /// `%{s}`, with `postmaster` for an empty local part.
    sender: String,
    local: &'a str,
    sender_domain: &'a str,
    helo: &'a str,
    receiver: &'a str,
    deadline: Instant,
    /// DNS-querying terms evaluated so far.
    dns_terms: usize,
    /// Terms whose own query found no records.
    voids: usize,
    /// The client's PTR names (first 10), fetched once; empty after an
    /// error; the flag says the PTR lookup itself was void.
    ptr_names: Option<(Vec<String>, bool)>,
    /// PTR names already checked against the client's address.
    validated: HashMap<String, bool>,
    /// The checked domain's own record.
    record: Option<String>,
    /// The term that decided the result, for the outcome's detail.
    decided_by: String,
}

impl<'a> Eval<'a> {
    /// `check_host()` for `domain`: `Ok` with pass, fail, softfail,
    /// neutral or none; the errors as [`Stop`].
    fn check_host(&mut self, domain: String, top: bool) -> Step<'_, SpfResult> {
        Box::pin(async move {
            // §4.3: a malformed or single-label domain has no policy.
            if dns_name(&domain).is_none_or(|d| !d.contains('.')) {
                self.decided_by = format!("{domain} is not a domain name");
                return Ok(SpfResult::None);
            }
            let domain = domain.strip_suffix('.').unwrap_or(&domain).to_string();
            let answers = self
                .dns
                .lookup(&domain, Kind::Txt, self.deadline)
                .await
                .map_err(Stop::Temp)?;
            let records: Vec<&[u8]> = answers
                .iter()
                .filter_map(|rr| match rr {
                    Rr::Txt(text) if is_spf1(text) => Some(text.as_slice()),
                    _ => None,
                })
                .collect();
            if top {
                self.record = records
                    .first()
                    .map(|r| String::from_utf8_lossy(r).into_owned());
            }
            let record = match records.as_slice() {
                [] => {
                    self.decided_by = format!("no v=spf1 record at {domain}");
                    return Ok(SpfResult::None);
                }
                [one] => parse_record(one).map_err(|why| Stop::Perm(format!("{domain}: {why}")))?,
                _ => return Err(Stop::Perm(format!("{domain}: several v=spf1 records"))),
            };

            for directive in &record.directives {
                if self.matches(&directive.mechanism, &domain).await? {
                    self.decided_by = format!("{domain}: {} matched", directive.text);
                    return Ok(directive.qualifier);
                }
            }
            let Some(target) = &record.redirect else {
                self.decided_by = format!("{domain}: no mechanism matched");
                return Ok(SpfResult::Neutral);
            };
            let Some(target) = self.dns_term(Some(target), &domain).await? else {
                return Err(Stop::Perm(format!(
                    "{domain}: the redirect= target is not a domain name"
                )));
            };
            match self.check_host(target.clone(), false).await? {
                SpfResult::None => Err(Stop::Perm(format!(
                    "{domain}: redirect={target} has no SPF record"
                ))),
                result => Ok(result),
            }
        })
    }

    /// Whether `mechanism` of `domain`'s record matches the client.
    fn matches<'m>(&'m mut self, mechanism: &'m Mechanism, domain: &'m str) -> Step<'m, bool> {
        Box::pin(async move {
            match mechanism {
                Mechanism::All => Ok(true),
                Mechanism::Ip4(net, len) => Ok(match self.ip {
                    IpAddr::V4(ip) => in_v4(ip, *net, *len),
                    IpAddr::V6(_) => false,
                }),
                Mechanism::Ip6(net, len) => Ok(match self.ip {
                    IpAddr::V6(ip) => in_v6(ip, *net, *len),
                    IpAddr::V4(_) => false,
                }),
                Mechanism::A {
                    domain: spec,
                    v4,
                    v6,
                } => {
                    let Some(target) = self.dns_term(spec.as_ref(), domain).await? else {
                        return Ok(false);
                    };
                    let found = self.addresses(&target).await?;
                    if found.is_empty() {
                        self.void(&target)?;
                    }
                    Ok(found.iter().any(|a| self.in_cidr(*a, *v4, *v6)))
                }
                Mechanism::Mx {
                    domain: spec,
                    v4,
                    v6,
                } => {
                    let Some(target) = self.dns_term(spec.as_ref(), domain).await? else {
                        return Ok(false);
                    };
                    let exchanges = self.lookup(&target, Kind::Mx).await?;
                    if exchanges.is_empty() {
                        self.void(&target)?;
                        return Ok(false);
                    }
                    if exchanges.len() > MAX_NAMES_PER_LOOKUP {
                        return Err(Stop::Perm(format!(
                            "{target} has {} MX records (at most {MAX_NAMES_PER_LOOKUP})",
                            exchanges.len()
                        )));
                    }
                    for exchange in exchanges {
                        // A null MX (RFC 7505) or an unqueryable exchange
                        // names no host.
                        let Rr::Name(exchange) = exchange else {
                            continue;
                        };
                        let Some(exchange) = dns_name(&exchange).map(str::to_string) else {
                            continue;
                        };
                        let found = self.addresses(&exchange).await?;
                        if found.iter().any(|a| self.in_cidr(*a, *v4, *v6)) {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                Mechanism::Ptr(spec) => {
                    let Some(target) = self.dns_term(spec.as_ref(), domain).await? else {
                        return Ok(false);
                    };
                    let (names, void) = self.ptr_names().await;
                    if void {
                        self.void(&reverse_name(self.ip))?;
                    }
                    for name in names.iter().filter(|n| is_within(n, &target)) {
                        if self.validates(name).await {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                Mechanism::Exists(spec) => {
                    let Some(target) = self.dns_term(Some(spec), domain).await? else {
                        return Ok(false);
                    };
                    // §5.7: an A lookup whatever the client's family.
                    let found = self.lookup(&target, Kind::A).await?;
                    if found.is_empty() {
                        self.void(&target)?;
                    }
                    Ok(!found.is_empty())
                }
                Mechanism::Include(spec) => {
                    let Some(target) = self.dns_term(Some(spec), domain).await? else {
                        return Err(Stop::Perm(format!(
                            "{domain}: an include: target is not a domain name"
                        )));
                    };
                    // §5.2: pass matches; fail, softfail and neutral do
                    // not; errors propagate; none is a permerror.
                    match self.check_host(target.clone(), false).await? {
                        SpfResult::Pass => Ok(true),
                        SpfResult::None => Err(Stop::Perm(format!(
                            "{domain}: include:{target} has no SPF record"
                        ))),
                        _ => Ok(false),
                    }
                }
            }
        })
    }

    fn count_dns_term(&mut self) -> Result<(), Stop> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Stop::Perm(format!(
                "more than {MAX_DNS_TERMS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    fn void(&mut self, name: &str) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Stop::Perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups (the last: {name})"
            )));
        }
        Ok(())
    }

    async fn lookup(&self, name: &str, kind: Kind) -> Result<Vec<Rr>, Stop> {
        self.dns
            .lookup(name, kind, self.deadline)
            .await
            .map_err(Stop::Temp)
    }

    /// The A (IPv4 client) or AAAA (IPv6 client) addresses of `name`.
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Stop> {
        let kind = match self.ip {
            IpAddr::V4(_) => Kind::A,
            IpAddr::V6(_) => Kind::Aaaa,
        };
        Ok(self
            .lookup(name, kind)
            .await?
            .into_iter()
            .filter_map(|rr| match rr {
                Rr::A(a) => Some(IpAddr::V4(a)),
                Rr::Aaaa(a) => Some(IpAddr::V6(a)),
                _ => None,
            })
            .collect())
    }

    fn in_cidr(&self, addr: IpAddr, v4: u8, v6: u8) -> bool {
        match (self.ip, addr) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => in_v4(ip, net, v4),
            (IpAddr::V6(ip), IpAddr::V6(net)) => in_v6(ip, net, v6),
            _ => false,
        }
    }

    /// The client's PTR names, the first 10, lowercase without the trailing
    /// dot, fetched once; and whether the PTR lookup was void. A DNS error
    /// gives no names (§5.5: the mechanism does not match).
    async fn ptr_names(&mut self) -> (Vec<String>, bool) {
        if let Some(cached) = &self.ptr_names {
            return cached.clone();
        }
        let fetched = match self.lookup(&reverse_name(self.ip), Kind::Ptr).await {
            Ok(answers) => {
                let void = answers.is_empty();
                let names = answers
                    .into_iter()
                    .take(MAX_NAMES_PER_LOOKUP)
                    .filter_map(|rr| match rr {
                        Rr::Name(n) => dns_name(&n).map(str::to_string),
                        _ => None,
                    })
                    .collect();
                (names, void)
            }
            Err(_) => (Vec::new(), false),
        };
        self.ptr_names = Some(fetched.clone());
        fetched
    }

    /// Whether `name` (a PTR name of the client) resolves back to the
    /// client's address; a DNS error means it does not (§5.5).
    async fn validates(&mut self, name: &str) -> bool {
        if let Some(known) = self.validated.get(name) {
            return *known;
        }
        let valid = self
            .addresses(name)
            .await
            .is_ok_and(|found| found.contains(&self.ip));
        self.validated.insert(name.to_string(), valid);
        valid
    }

    /// `%{p}` (§7.3): the validated PTR name that is `domain`, else one
    /// below it, else any; `unknown` when none validates.
    async fn validated_name(&mut self, domain: &str) -> String {
        let (names, _) = self.ptr_names().await;
        let rank = |n: &String| {
            if n.eq_ignore_ascii_case(domain) {
                0
            } else if is_within(n, domain) {
                1
            } else {
                2
            }
        };
        let mut ordered: Vec<&String> = names.iter().collect();
        ordered.sort_by_key(|n| rank(n));
        for name in ordered {
            if self.validates(name).await {
                return name.clone();
            }
        }
        "unknown".to_string()
    }

    /// The target name of a term: its domain-spec expanded, or `domain`.
    /// A DNS-querying term begins: it is counted (§4.6.4), then its target
    /// is `spec` expanded, or `domain` when it names none.
    async fn dns_term(
        &mut self,
        spec: Option<&MacroString>,
        domain: &str,
    ) -> Result<Option<String>, Stop> {
        self.count_dns_term()?;
        Ok(self.target_or(spec, domain).await)
    }

    async fn target_or(&mut self, spec: Option<&MacroString>, domain: &str) -> Option<String> {
        match spec {
            Some(spec) => self.target(spec, domain).await,
            None => Some(domain.to_string()),
        }
    }

    /// `spec` expanded into a name to query (§7.3: a result over 253 bytes
    /// loses labels on the left), or `None` when it cannot be one.
    async fn target(&mut self, spec: &MacroString, domain: &str) -> Option<String> {
        let mut name = self.expand(spec, domain).await;
        if let Some(stripped) = name.strip_suffix('.') {
            name.truncate(stripped.len());
        }
        if spec.has_letters {
            while name.len() > MAX_NAME_LEN {
                let Some((_, rest)) = name.split_once('.') else {
                    break;
                };
                name = rest.to_string();
            }
        }
        dns_name(&name).map(str::to_string)
    }

    async fn expand(&mut self, spec: &MacroString, domain: &str) -> String {
        let mut out = String::new();
        for piece in &spec.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Macro(m) => {
                    let value = match m.letter {
                        b'p' => self.validated_name(domain).await,
                        letter => self.letter_value(letter, domain),
                    };
                    out.push_str(&m.apply(&value));
                }
            }
        }
        out
    }

    /// The value of a macro letter other than `p` (§7.3).
    fn letter_value(&self, letter: u8, domain: &str) -> String {
        match letter {
            b's' => self.sender.clone(),
            b'l' => self.local.to_string(),
            b'o' => self.sender_domain.to_string(),
            b'd' => domain.to_string(),
            b'i' => dotted(self.ip),
            b'v' => match self.ip {
                IpAddr::V4(_) => "in-addr".to_string(),
                IpAddr::V6(_) => "ip6".to_string(),
            },
            b'h' => self.helo.to_string(),
            b'c' => self.ip.to_string(),
            b'r' if !self.receiver.is_empty() => self.receiver.to_string(),
            b'r' => "unknown".to_string(),
            b't' => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string(),
            _ => String::new(),
        }
    }
}

/// `name` is `parent` or below it, by whole labels, ignoring case.
fn is_within(name: &str, parent: &str) -> bool {
    let (name, parent) = (name.to_ascii_lowercase(), parent.to_ascii_lowercase());
    name == parent || name.ends_with(&format!(".{parent}"))
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// `%{i}`: the dotted quad, or for IPv6 the 32 nibbles dotted (§7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let nibbles: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            nibbles.join(".")
        }
    }
}

/// The reverse-lookup name of the client.
fn reverse_name(ip: IpAddr) -> String {
    let mut parts: Vec<String> = dotted(ip).split('.').map(str::to_string).collect();
    parts.reverse();
    let suffix = match ip {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    format!("{}.{suffix}", parts.join("."))
}

// ---------------------------------------------------------------------------
// Records

/// A record that begins with the version section `v=spf1`, ended by SP or
/// the end of the record, in any case (§4.5).
fn is_spf1(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

/// A parsed `v=spf1` record.
#[derive(Debug)]
struct Record {
    directives: Vec<Directive>,
    redirect: Option<MacroString>,
}

#[derive(Debug)]
struct Directive {
    /// The result when the mechanism matches.
    qualifier: SpfResult,
    mechanism: Mechanism,
    /// The term as written, for the outcome's detail.
    text: String,
}

#[derive(Debug, PartialEq)]
enum Mechanism {
    All,
    Include(MacroString),
    A {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Ptr(Option<MacroString>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(MacroString),
}

/// Parses a selected record (already known to start with `v=spf1`).
fn parse_record(text: &[u8]) -> Result<Record, String> {
    if !text.is_ascii() {
        return Err("the record is not 7-bit ASCII".into());
    }
    if let Some(c) = text[6..]
        .iter()
        .find(|&&c| c != b' ' && !c.is_ascii_graphic())
    {
        return Err(format!(
            "character 0x{c:02x} in the record (terms are separated by spaces only)"
        ));
    }
    // Only ASCII (checked above), so this cannot fail.
    let text = std::str::from_utf8(&text[6..]).map_err(|e| e.to_string())?;
    let mut record = Record {
        directives: Vec::new(),
        redirect: None,
    };
    let mut exp = false;
    for term in text.split(' ').filter(|t| !t.is_empty()) {
        if let Some((name, value)) = term.split_once('=')
            && is_modifier_name(name)
        {
            if name.eq_ignore_ascii_case("redirect") {
                if record.redirect.is_some() {
                    return Err("redirect= appears twice".into());
                }
                record.redirect = Some(domain_spec(value).map_err(|e| format!("{term}: {e}"))?);
            } else if name.eq_ignore_ascii_case("exp") {
                if exp {
                    return Err("exp= appears twice".into());
                }
                domain_spec(value).map_err(|e| format!("{term}: {e}"))?;
                exp = true;
            } else {
                // An unknown modifier is ignored once its value is a valid
                // macro-string (appendix A); it is never expanded, so any
                // macro letter of the ABNF is accepted.
                MacroString::parse(value, true).map_err(|e| format!("{term}: {e}"))?;
            }
            continue;
        }
        let (qualifier, mechanism) = parse_directive(term).map_err(|e| format!("{term}: {e}"))?;
        record.directives.push(Directive {
            qualifier,
            mechanism,
            text: term.to_string(),
        });
    }
    Ok(record)
}

/// `name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )` (appendix A).
fn is_modifier_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_directive(term: &str) -> Result<(SpfResult, Mechanism), String> {
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (SpfResult::Pass, &term[1..]),
        b'-' => (SpfResult::Fail, &term[1..]),
        b'~' => (SpfResult::SoftFail, &term[1..]),
        b'?' => (SpfResult::Neutral, &term[1..]),
        _ => (SpfResult::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(split);
    let domain_arg = |arg: &str| -> Result<MacroString, String> {
        match arg.strip_prefix(':') {
            Some(spec) => domain_spec(spec),
            None => Err("expected ':' and a domain-spec".into()),
        }
    };
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "all" => return Err("all takes no argument".into()),
        "include" => Mechanism::Include(domain_arg(arg)?),
        "exists" => Mechanism::Exists(domain_arg(arg)?),
        "ptr" if arg.is_empty() => Mechanism::Ptr(None),
        "ptr" => Mechanism::Ptr(Some(domain_arg(arg)?)),
        "a" => {
            let (domain, v4, v6) = domain_and_cidr(arg)?;
            Mechanism::A { domain, v4, v6 }
        }
        "mx" => {
            let (domain, v4, v6) = domain_and_cidr(arg)?;
            Mechanism::Mx { domain, v4, v6 }
        }
        "ip4" => {
            let arg = arg.strip_prefix(':').ok_or("expected ':' and an address")?;
            let (net, len) = match arg.split_once('/') {
                Some((net, len)) => (net, cidr_length(len, 32)?),
                None => (arg, 32),
            };
            Mechanism::Ip4(
                parse_ip4(net).ok_or_else(|| format!("{net:?} is not an IPv4 address"))?,
                len,
            )
        }
        "ip6" => {
            let arg = arg.strip_prefix(':').ok_or("expected ':' and an address")?;
            let (net, len) = match arg.split_once('/') {
                Some((net, len)) => (net, cidr_length(len, 128)?),
                None => (arg, 128),
            };
            Mechanism::Ip6(
                net.parse()
                    .map_err(|_| format!("{net:?} is not an IPv6 address"))?,
                len,
            )
        }
        _ => return Err("unknown mechanism".into()),
    };
    Ok((qualifier, mechanism))
}

/// `[ ":" domain-spec ] [ dual-cidr-length ]` of `a` and `mx`, with the
/// default lengths /32 and //128. The CIDR part is the longest tail of the
/// form `/n`, `//n` or `/n//n`; what is before it is the domain-spec (which
/// may itself hold `/`, as in `a:foo:bar/baz.example.com`).
fn domain_and_cidr(arg: &str) -> Result<(Option<MacroString>, u8, u8), String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut rest = arg;
    let (mut v4, mut v6) = (32, 128);
    if let Some(i) = rest.rfind("//")
        && digits(&rest[i + 2..])
    {
        v6 = cidr_length(&rest[i + 2..], 128)?;
        rest = &rest[..i];
    }
    if let Some(i) = rest.rfind('/')
        && digits(&rest[i + 1..])
    {
        v4 = cidr_length(&rest[i + 1..], 32)?;
        rest = &rest[..i];
    }
    let domain = match rest.strip_prefix(':') {
        Some(spec) => Some(domain_spec(spec)?),
        None if rest.is_empty() => None,
        None => return Err(format!("unexpected {rest:?}")),
    };
    Ok((domain, v4, v6))
}

/// A CIDR length: digits without a leading zero, at most `max`.
fn cidr_length(text: &str, max: u8) -> Result<u8, String> {
    let valid = !text.is_empty()
        && text.len() <= 3
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse::<u8>() {
        Ok(len) if valid && len <= max => Ok(len),
        _ => Err(format!("invalid CIDR length /{text} (0 to {max})")),
    }
}

/// A dotted quad of decimal octets without leading zeros (§5.6).
fn parse_ip4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let valid = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !valid {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// A domain-spec (§7.1): a macro-string with the letters of domain names,
/// ending in a macro or in `.toplabel` with an optional trailing dot.
fn domain_spec(text: &str) -> Result<MacroString, String> {
    if text.is_empty() {
        return Err("empty domain-spec".into());
    }
    let spec = MacroString::parse(text, false)?;
    if !spec.ends_in_macro {
        let tail = &text[text.len() - spec.literal_tail..];
        let tail = tail.strip_suffix('.').unwrap_or(tail);
        let toplabel = tail.rsplit_once('.').map(|(_, top)| top);
        if !toplabel.is_some_and(is_toplabel) {
            return Err("a domain-spec must end in a toplabel with a letter, or a macro".into());
        }
    }
    Ok(spec)
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) /
/// ( 1*alphanum "-" *( alphanum / "-" ) alphanum )` (§7.1).
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

// ---------------------------------------------------------------------------
// Macros

/// A parsed macro-string (§7.1).
#[derive(Debug, Clone, PartialEq)]
struct MacroString {
    pieces: Vec<Piece>,
    /// It holds a `%{…}` macro, so its expansion is truncated to 253 bytes.
    has_letters: bool,
    /// It ends in a macro-expand (including `%%`, `%_`, `%-`).
    ends_in_macro: bool,
    /// Bytes of literal text after the last macro-expand.
    literal_tail: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Macro(Macro),
}

/// `%{` letter transformers delimiters `}`.
#[derive(Debug, Clone, PartialEq)]
struct Macro {
    /// The letter, lowercase.
    letter: u8,
    /// An uppercase letter: the value is URL-escaped.
    escape: bool,
    /// Right-hand parts kept, if given (never zero).
    keep: Option<usize>,
    reverse: bool,
    /// The delimiters to split at (`.` when none is given).
    delimiters: Vec<u8>,
}

impl MacroString {
    /// Parses `text`; `explanation_letters` also allows `c`, `r` and `t`.
    fn parse(text: &str, explanation_letters: bool) -> Result<MacroString, String> {
        let mut spec = MacroString {
            pieces: Vec::new(),
            has_letters: false,
            ends_in_macro: false,
            literal_tail: 0,
        };
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c != b'%' {
                if !c.is_ascii_graphic() {
                    return Err(format!("character 0x{c:02x} not allowed"));
                }
                literal.push(char::from(c));
                spec.ends_in_macro = false;
                spec.literal_tail += 1;
                i += 1;
                continue;
            }
            spec.ends_in_macro = true;
            spec.literal_tail = 0;
            match bytes.get(i + 1) {
                Some(b'%') => literal.push('%'),
                Some(b'_') => literal.push(' '),
                Some(b'-') => literal.push_str("%20"),
                Some(b'{') => {
                    let end = text[i..]
                        .find('}')
                        .map(|e| i + e)
                        .ok_or("unterminated macro")?;
                    let m = Macro::parse(&text[i + 2..end], explanation_letters)?;
                    if !literal.is_empty() {
                        spec.pieces
                            .push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    spec.pieces.push(Piece::Macro(m));
                    spec.has_letters = true;
                    i = end + 1;
                    continue;
                }
                _ => return Err("'%' not followed by '{', '%', '_' or '-'".into()),
            }
            i += 2;
        }
        if !literal.is_empty() {
            spec.pieces.push(Piece::Literal(literal));
        }
        Ok(spec)
    }
}

impl Macro {
    /// Parses what is between `%{` and `}`.
    fn parse(body: &str, explanation_letters: bool) -> Result<Macro, String> {
        let bytes = body.as_bytes();
        let Some(&letter) = bytes.first() else {
            return Err("empty macro".into());
        };
        let lower = letter.to_ascii_lowercase();
        let allowed: &[u8] = if explanation_letters {
            b"slodiphvcrt"
        } else {
            b"slodiphv"
        };
        if !allowed.contains(&lower) {
            return Err(if b"crt".contains(&lower) {
                format!(
                    "macro letter {} is for explanations only",
                    char::from(letter)
                )
            } else {
                format!("unknown macro letter {:?}", char::from(letter))
            });
        }
        let mut i = 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let keep = if i > 1 {
            // Any number of parts past the count of parts keeps them all.
            let n = body[1..i].parse::<usize>().unwrap_or(usize::MAX);
            if n == 0 {
                return Err("a macro digit transformer must not be zero".into());
            }
            Some(n)
        } else {
            None
        };
        let reverse = bytes.get(i).is_some_and(|b| b.eq_ignore_ascii_case(&b'r'));
        if reverse {
            i += 1;
        }
        let delimiters = bytes[i..].to_vec();
        if let Some(bad) = delimiters.iter().find(|d| !b".-+,/_=".contains(d)) {
            return Err(format!("invalid macro delimiter {:?}", char::from(*bad)));
        }
        Ok(Macro {
            letter: lower,
            escape: letter.is_ascii_uppercase(),
            keep,
            reverse,
            delimiters,
        })
    }

    /// The transformed (and, for an uppercase letter, URL-escaped) value.
    fn apply(&self, value: &str) -> String {
        let delimiters: &[u8] = if self.delimiters.is_empty() {
            b"."
        } else {
            &self.delimiters
        };
        let mut parts: Vec<&str> = value
            .split(|c: char| c.is_ascii() && delimiters.contains(&(c as u8)))
            .collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep
            && keep < parts.len()
        {
            parts.drain(..parts.len() - keep);
        }
        let joined = parts.join(".");
        if !self.escape {
            return joined;
        }
        let mut escaped = String::new();
        for b in joined.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                escaped.push(char::from(b));
            } else {
                escaped.push_str(&format!("%{b:02X}"));
            }
        }
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    const CLIENT: &str = "192.0.2.10";

    async fn evaluate(zone: Zone, ip: &str, sender: &str, helo: &str) -> Outcome {
        let dns = Dns::Fixed(zone);
        let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
        let input = Input {
            ip: ip.parse().unwrap(),
            sender,
            helo,
            receiver: "mx1.ivpn.net",
            domain,
        };
        check_host(&dns, &input, Instant::now() + Duration::from_secs(5)).await
    }

    /// Checks `record`, published at example.com with `zone` around it,
    /// for a client `ip`, sender `user@example.com`.
    async fn check(zone: Zone, record: &str, ip: &str, expected: SpfResult) {
        let zone = zone.txt("example.com", record);
        let outcome = evaluate(zone, ip, "user@example.com", "mail.example.com").await;
        assert_eq!(
            outcome.result, expected,
            "{record:?} from {ip}: {}",
            outcome.detail
        );
    }

    /// Each record alone, from [`CLIENT`].
    async fn table(cases: &[(&str, SpfResult)]) {
        for (record, expected) in cases {
            check(Zone::new(), record, CLIENT, *expected).await;
        }
    }

    use SpfResult::*;

    #[tokio::test]
    async fn malformed_records_are_permerrors() {
        table(&[
            ("v=spf1 ip4:192.0.2.10/33 -all", PermError),
            ("v=spf1 ip4:192.0.2.10/032 -all", PermError),
            ("v=spf1 ip4:192.0.2.10/32 -all", Pass),
            ("v=spf1 ip4:192.0.2.10//32 -all", PermError),
            ("v=spf1 ip4:192.0.2.010 -all", PermError),
            ("v=spf1 ip4:192.0.2 -all", PermError),
            ("v=spf1 ip4:192.0.2.10:25 -all", PermError),
            ("v=spf1 ip4 -all", PermError),
            ("v=spf1 ip6:::1/129 -all", PermError),
            ("v=spf1 ip6:::1//64 -all", PermError),
            ("v=spf1 ip6::CAFE::BABE -all", PermError),
            ("v=spf1 a/33 -all", PermError),
            ("v=spf1 a//129 -all", PermError),
            ("v=spf1 a/24/64 -all", PermError),
            ("v=spf1 mx/024 -all", PermError),
            // Control characters are not separators.
            ("v=spf1 ip4:192.0.2.10\r -all", PermError),
            ("v=spf1 ip4:192.0.2.10\n -all", PermError),
            ("v=spf1 ip4:192.0.2.10\t-all", PermError),
            ("v=spf1 a:foo.example.com\0", PermError),
            ("v=spf1 a:\u{feff}foo.example.com -all", PermError),
            // Domain-specs must end in a toplabel with a letter, or a macro.
            ("v=spf1 a:111.222.33.44", PermError),
            ("v=spf1 a:abc.123 -all", PermError),
            ("v=spf1 a:museum -all", PermError),
            ("v=spf1 a:museum. -all", PermError),
            ("v=spf1 a:example.-com -all", PermError),
            ("v=spf1 mx:example.com:8080 -all", PermError),
            ("v=spf1 include:example.net/24 -all", PermError),
            ("v=spf1 exists:example.net/24 -all", PermError),
            ("v=spf1 a: -all", PermError),
            ("v=spf1 include -all", PermError),
            ("v=spf1 ptr/0 -all", PermError),
            ("v=spf1 -all.", PermError),
            ("v=spf1 -all:x", PermError),
            // Mechanisms and modifiers.
            ("v=spf1 ip4:192.0.2.10 -all moo", PermError),
            ("v=spf1 redirect:example.net", PermError),
            ("v=spf1 1up=foo", PermError),
            ("v=spf1 =all", PermError),
            ("v=spf1 moo.cow/x=y -all", PermError),
            (
                "v=spf1 moo.cow-far_out=man:dog/cat ip4:192.0.2.10 -all",
                Pass,
            ),
            ("v=spf1 default=+ ?all", Neutral),
            ("v=spf1 foo=%abc -all", PermError),
            ("v=spf1 exp= -all", PermError),
            ("v=spf1 exp=-all", PermError),
            ("v=spf1 redirect=-all", PermError),
            ("v=spf1 ?all redirect=", PermError),
            ("v=spf1 exp=a.example.net exp=b.example.net -all", PermError),
            (
                "v=spf1 redirect=a.example.net redirect=a.example.net",
                PermError,
            ),
            ("v=spf1 -all exp=%{r}.example.net", PermError),
            ("v=spf1 exp=%{d}.explain.example.net -all", Fail),
            // Macros.
            ("v=spf1 exists:%(ir).example.net ?all", PermError),
            ("v=spf1 exists:foo%.example.net ?all", PermError),
            ("v=spf1 a:%{a}.example.net -all", PermError),
            ("v=spf1 a:%{d0}.example.net -all", PermError),
            ("v=spf1 a:%{d2!}.example.net -all", PermError),
            ("v=spf1 a:%{d -all", PermError),
            ("v=spf1 +all", Pass),
            ("V=SpF1 ~ALL", SoftFail),
            ("v=spf1   -all  ", Fail),
            ("v=spf1", Neutral),
        ])
        .await;
    }

    #[tokio::test]
    async fn record_selection() {
        let check_zone = |zone: Zone, expected: SpfResult| async move {
            let outcome = evaluate(zone, CLIENT, "user@example.com", "h.example.com").await;
            assert_eq!(outcome.result, expected, "{}", outcome.detail);
            outcome
        };
        let none = check_zone(Zone::new(), None).await;
        assert_eq!(none.record, Option::None);
        check_zone(Zone::new().txt("example.com", "v=spf10 +all"), None).await;
        check_zone(Zone::new().txt("example.com", "v=spf1mx"), None).await;
        let two = Zone::new()
            .txt("example.com", "v=spf1 -all")
            .txt("example.com", "V=SPF1 +all");
        let outcome = check_zone(two, PermError).await;
        assert_eq!(outcome.record.as_deref(), Some("v=spf1 -all"));
        // Other TXT records, non-ASCII ones included, are not looked at.
        let others = Zone::new()
            .txt("example.com", "\u{96}")
            .txt("example.com", "v=spf1 -all")
            .txt("example.com", "google-site-verification=x");
        check_zone(others, Fail).await;
        check_zone(Zone::new().servfail("example.com"), TempError).await;
    }

    #[tokio::test]
    async fn dns_querying_terms_are_limited_to_ten() {
        // Names with records, so that no lookup is void.
        let zone = || {
            Zone::new()
                .a("example.com", Ipv4Addr::new(198, 51, 100, 1))
                .mx("example.com", "example.com")
        };
        let ten = "v=spf1 a a a a a mx mx mx mx a ip4:192.0.2.10 -all";
        check(zone(), ten, CLIENT, Pass).await;
        let eleven = "v=spf1 a a a a a mx mx mx mx a a ip4:192.0.2.10 -all";
        check(zone(), eleven, CLIENT, PermError).await;
        // Counted as evaluated, through includes and redirects.
        let zone = zone()
            .txt("inc.example.com", "v=spf1 a a a a a a a a")
            .a("inc.example.com", Ipv4Addr::new(198, 51, 100, 2))
            .txt("loop.example.com", "v=spf1 redirect=loop.example.com");
        check(
            zone,
            "v=spf1 a include:inc.example.com a ip4:192.0.2.10 -all",
            CLIENT,
            PermError,
        )
        .await;
        let loops = Zone::new().txt("loop.example.com", "v=spf1 redirect=loop.example.com");
        check(loops, "v=spf1 redirect=loop.example.com", CLIENT, PermError).await;
        // A term after a match is never evaluated.
        check(
            Zone::new(),
            "v=spf1 ip4:192.0.2.10 a a a a a a a a a a a a",
            CLIENT,
            Pass,
        )
        .await;
    }

    #[tokio::test]
    async fn void_lookups_are_limited_to_two() {
        check(
            Zone::new(),
            "v=spf1 a:n1.example.net a:n2.example.net ?all",
            CLIENT,
            Neutral,
        )
        .await;
        check(
            Zone::new(),
            "v=spf1 a:n1.example.net mx:n2.example.net exists:n3.example.net ?all",
            CLIENT,
            PermError,
        )
        .await;
        // A name that cannot be queried does no lookup, void or not.
        check(
            Zone::new(),
            "v=spf1 a:n1..example.net a:n2..example.net a:n3..example.net -all",
            CLIENT,
            Fail,
        )
        .await;
    }

    #[tokio::test]
    async fn unqueryable_names_do_not_match() {
        let long = format!("v=spf1 a:{}.example.net -all", "x".repeat(64));
        table(&[
            ("v=spf1 a:mail.example...net -all", Fail),
            (long.as_str(), Fail),
        ])
        .await;
        // An include or redirect to such a name is a permerror.
        table(&[
            ("v=spf1 include:a..example.net -all", PermError),
            ("v=spf1 redirect=a..example.net", PermError),
        ])
        .await;
    }

    #[tokio::test]
    async fn include_and_redirect_results() {
        let zone = || {
            Zone::new()
                .txt("pass.example.net", "v=spf1 +all")
                .txt("fail.example.net", "v=spf1 -all")
                .txt("soft.example.net", "v=spf1 ~all")
                .txt("perm.example.net", "v=spf1 ip4:1.2.3.4/33")
                .txt("other.example.net", "not spf")
                .servfail("temp.example.net")
        };
        for (target, include, redirect) in [
            ("pass", Pass, Pass),
            ("fail", Fail, Fail),
            ("soft", Fail, SoftFail),
            ("perm", PermError, PermError),
            ("temp", TempError, TempError),
            ("other", PermError, PermError),
            ("absent", PermError, PermError),
        ] {
            let name = format!("{target}.example.net");
            check(
                zone(),
                &format!("v=spf1 include:{name} -all"),
                CLIENT,
                include,
            )
            .await;
            check(zone(), &format!("v=spf1 redirect={name}"), CLIENT, redirect).await;
        }
        // redirect= applies after all mechanisms, and not after an `all`.
        check(
            zone(),
            "v=spf1 redirect=pass.example.net ip4:192.0.2.10 -all",
            CLIENT,
            Pass,
        )
        .await;
        check(
            zone(),
            "v=spf1 redirect=pass.example.net -all",
            CLIENT,
            Fail,
        )
        .await;
        // The redirect's target is the new <domain> for its record.
        let zone = Zone::new()
            .txt("target.example.net", "v=spf1 a -all")
            .a("target.example.net", Ipv4Addr::new(192, 0, 2, 10));
        check(zone, "v=spf1 redirect=target.example.net", CLIENT, Pass).await;
    }

    #[tokio::test]
    async fn a_mx_and_cidr_lengths() {
        let zone = || {
            Zone::new()
                .a("example.com", Ipv4Addr::new(192, 0, 2, 99))
                .aaaa("example.com", "2001:db8::99".parse().unwrap())
                .mx("example.com", "mx.example.com")
                .a("mx.example.com", Ipv4Addr::new(198, 51, 100, 7))
        };
        check(zone(), "v=spf1 a -all", CLIENT, Fail).await;
        check(zone(), "v=spf1 a/24 -all", CLIENT, Pass).await;
        check(zone(), "v=spf1 a:example.com/24//128 -all", CLIENT, Pass).await;
        check(zone(), "v=spf1 a//0 -all", CLIENT, Fail).await;
        check(zone(), "v=spf1 a//64 -all", "2001:db8::1", Pass).await;
        check(zone(), "v=spf1 a/0 -all", "2001:db8:ffff::1", Fail).await;
        check(zone(), "v=spf1 mx -all", "198.51.100.7", Pass).await;
        check(zone(), "v=spf1 mx/24 -all", "198.51.100.200", Pass).await;
        // More than 10 MX records.
        let mut many = Zone::new();
        for i in 0..11 {
            many = many.mx("example.com", &format!("mx{i}.example.com"));
        }
        check(many, "v=spf1 mx -all", CLIENT, PermError).await;
        // A null MX names no host; no fallback to the A record (§5.4).
        let null = Zone::new()
            .mx("example.com", ".")
            .a("example.com", Ipv4Addr::new(192, 0, 2, 10));
        check(null, "v=spf1 mx ?all", CLIENT, Neutral).await;
        // A DNS failure of an exchange is a temperror.
        let broken = Zone::new()
            .mx("example.com", "mx.example.com")
            .servfail("mx.example.com");
        check(broken, "v=spf1 mx -all", CLIENT, TempError).await;
    }

    #[tokio::test]
    async fn ipv4_mapped_clients_are_ipv4() {
        let record = "v=spf1 ip6:::ffff:192.0.2.10 ip4:192.0.2.10 -all";
        let outcome = evaluate(
            Zone::new().txt("example.com", record),
            "::ffff:192.0.2.10",
            "user@example.com",
            "h",
        )
        .await;
        assert_eq!(outcome.result, Pass);
        assert_eq!(outcome.detail, "example.com: ip4:192.0.2.10 matched");
        check(Zone::new(), "v=spf1 ip6:::/0 ?all", CLIENT, Neutral).await;
        check(
            Zone::new(),
            "v=spf1 ip6:::/0 ?all",
            "::ffff:192.0.2.10",
            Neutral,
        )
        .await;
        check(Zone::new(), "v=spf1 ip6:::/0 -all", "2001:db8::1", Pass).await;
    }

    #[tokio::test]
    async fn exists_asks_for_a_records_only() {
        let zone = || {
            Zone::new()
                .aaaa("v6.example.net", "2001:db8::1".parse().unwrap())
                .a("v4.example.net", Ipv4Addr::new(127, 0, 0, 2))
        };
        check(
            zone(),
            "v=spf1 exists:v6.example.net -all",
            "2001:db8::1",
            Fail,
        )
        .await;
        check(
            zone(),
            "v=spf1 exists:v4.example.net -all",
            "2001:db8::1",
            Pass,
        )
        .await;
    }

    fn macro_string(text: &str) -> MacroString {
        MacroString::parse(text, true).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Expands `text` for the RFC 7208 §7.4 example: sender
    /// strong-bad@email.example.com from 192.0.2.3 (or `ip`).
    async fn expand(text: &str, ip: &str) -> String {
        let dns = Dns::Fixed(Zone::new());
        let mut eval = Eval {
            dns: &dns,
            ip: unmapped(ip.parse().unwrap()),
            sender: "strong-bad@email.example.com".into(),
            local: "strong-bad",
            sender_domain: "email.example.com",
            helo: "mx.example.org",
            receiver: "mx1.ivpn.net",
            deadline: Instant::now() + Duration::from_secs(1),
            dns_terms: 0,
            voids: 0,
            ptr_names: Option::None,
            validated: HashMap::new(),
            record: Option::None,
            decided_by: String::new(),
        };
        eval.expand(&macro_string(text), "email.example.com").await
    }

    #[tokio::test]
    async fn macro_expansion_as_in_rfc7208_section_7_4() {
        let v4 = "192.0.2.3";
        for (text, expected) in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            (
                "%{ir}.%{v}._spf.%{d2}",
                "3.2.0.192.in-addr._spf.example.com",
            ),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
                "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
            ),
            (
                "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
                "3.2.0.192.in-addr.strong.lp._spf.example.com",
            ),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
            ("%{h}", "mx.example.org"),
            ("%{c}", "192.0.2.3"),
            ("%{r}", "mx1.ivpn.net"),
            ("%{p}", "unknown"),
            ("%{d99}", "email.example.com"),
            ("%{S}", "strong-bad%40email.example.com"),
            ("%%%_%-", "% %20"),
        ] {
            assert_eq!(expand(text, v4).await, expected, "{text}");
        }
        let v6 = "2001:db8::cb01";
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", v6).await,
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(
            expand("%{i}", v6).await,
            "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"
        );
        assert_eq!(expand("%{c}", v6).await, "2001:db8::cb01");
        assert_eq!(expand("%{v}", "::ffff:192.0.2.3").await, "in-addr");
        // Several delimiters, rejoined with dots; uppercase URL-escapes.
        let m = |text: &str| match &macro_string(text).pieces[0] {
            Piece::Macro(m) => m.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(m("%{l2r+-}").apply("foo-bar+zip+quux"), "bar.foo");
        assert_eq!(m("%{l=,}").apply("a=b,c"), "a.b.c");
        assert_eq!(
            m("%{L}").apply("~jack&jill=up-a_b3.c"),
            "~jack%26jill%3Dup-a_b3.c"
        );
        assert_eq!(m("%{H}").apply("JUMPIN' JUPITER"), "JUMPIN%27%20JUPITER");
    }

    #[tokio::test]
    async fn macros_in_evaluation() {
        // %{i} of an IPv6 client is its nibbles.
        let v6 = "2001:db8::1";
        let nibbles = dotted(v6.parse().unwrap());
        let zone = Zone::new().a(
            &format!("{nibbles}.v6.example.net"),
            Ipv4Addr::new(127, 0, 0, 2),
        );
        check(zone, "v=spf1 exists:%{i}.v6.example.net -all", v6, Pass).await;
        // Transformers on the local part.
        let zone = Zone::new()
            .txt("example.com", "v=spf1 exists:%{i}.%{l2r-}.user.%{d2} -all")
            .a(
                "192.0.2.10.gladstone.philip.user.example.com",
                Ipv4Addr::new(127, 0, 0, 2),
            );
        let outcome = evaluate(
            zone,
            CLIENT,
            "philip-gladstone-test@example.com",
            "h.example.com",
        )
        .await;
        assert_eq!(outcome.result, Pass, "{}", outcome.detail);
        // A long expansion loses labels on the left to fit in 253 bytes:
        // 131 + 1 + 131 + 14 bytes, less three labels of 10.
        let labels = [["abcdefghi"; 12].as_slice(), &["example", "com"]].concat();
        let long = labels.join(".");
        let zone = Zone::new()
            .txt(&long, "v=spf1 exists:%{d}.%{d}.x.example.net -all")
            .a(
                &format!("{}.{long}.x.example.net", labels[3..].join(".")),
                Ipv4Addr::new(127, 0, 0, 2),
            );
        let outcome = evaluate(zone, CLIENT, &format!("u@{long}"), "h").await;
        assert_eq!(outcome.result, Pass, "{}", outcome.detail);
        // An empty local part reads as postmaster.
        let zone = Zone::new()
            .txt("example.com", "v=spf1 exists:%{l}.%{d} -all")
            .a("postmaster.example.com", Ipv4Addr::new(127, 0, 0, 2));
        let outcome = evaluate(zone, CLIENT, "@example.com", "h").await;
        assert_eq!(outcome.result, Pass, "{}", outcome.detail);
    }

    #[tokio::test]
    async fn ptr_and_the_validated_name() {
        let zone = || {
            Zone::new()
                .ptr("10.2.0.192.in-addr.arpa", "mail.example.com.")
                .ptr("10.2.0.192.in-addr.arpa", "forged.example.org")
                .a("mail.example.com", Ipv4Addr::new(192, 0, 2, 10))
                .a("forged.example.org", Ipv4Addr::new(198, 51, 100, 1))
                .a(
                    "mail.example.com.ok.example.net",
                    Ipv4Addr::new(127, 0, 0, 2),
                )
        };
        check(zone(), "v=spf1 ptr -all", CLIENT, Pass).await;
        check(zone(), "v=spf1 ptr:Example.COM -all", CLIENT, Pass).await;
        check(zone(), "v=spf1 ptr:example.org -all", CLIENT, Fail).await;
        check(zone(), "v=spf1 ptr -all", "192.0.2.11", Fail).await;
        check(
            zone(),
            "v=spf1 exists:%{p}.ok.example.net -all",
            CLIENT,
            Pass,
        )
        .await;
        // A PTR lookup failure is no match, not a temperror.
        let broken = Zone::new().servfail("10.2.0.192.in-addr.arpa");
        check(broken, "v=spf1 ptr ?all", CLIENT, Neutral).await;
    }

    #[test]
    fn toplabels() {
        for good in ["com", "xn--zckzah", "a1", "1a", "a-1", "1-2", "a--b"] {
            assert!(is_toplabel(good), "{good}");
        }
        for bad in ["", "123", "-com", "com-", "co_m", "com:80", "c%m"] {
            assert!(!is_toplabel(bad), "{bad}");
        }
    }

    #[test]
    fn cidr_lengths_and_addresses() {
        assert_eq!(cidr_length("0", 32), Ok(0));
        assert_eq!(cidr_length("32", 32), Ok(32));
        assert_eq!(cidr_length("128", 128), Ok(128));
        for bad in ["", "33", "032", "00", "1a", "+1", "0128"] {
            assert!(cidr_length(bad, 32).is_err(), "{bad}");
        }
        assert!(cidr_length("129", 128).is_err());
        assert_eq!(parse_ip4("0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "256.1.1.1",
            "1..2.3",
            "1.2.3.4 ",
        ] {
            assert_eq!(parse_ip4(bad), Option::None, "{bad}");
        }
        assert!(in_v4(
            "192.0.2.200".parse().unwrap(),
            "192.0.2.0".parse().unwrap(),
            24
        ));
        assert!(in_v4(
            "203.0.113.1".parse().unwrap(),
            "1.1.1.1".parse().unwrap(),
            0
        ));
        assert!(!in_v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db9::".parse().unwrap(),
            32
        ));
        assert!(in_v6(
            "2001:db8::1".parse().unwrap(),
            "::".parse().unwrap(),
            0
        ));
    }
}
