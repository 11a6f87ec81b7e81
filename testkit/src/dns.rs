//! A real, minimal authoritative DNS server on 127.0.0.1 for tests.
//!
//! [`DnsServer`] answers queries for the records of a [`Zone`] over UDP and
//! TCP (same port, RFC 1035 framing with a two-byte length prefix), speaking
//! the real wire protocol through `hickory-proto`. It runs on plain
//! `std::thread`s, so tests on any async runtime (or none) can use it, and the
//! resolver under test goes through its whole network path: sockets, EDNS,
//! truncation and the TCP retry, negative caching driven by the SOA, timeouts.
//!
//! Behaviour, in the order the server applies it for a query name:
//!
//! 1. If the name is at or below a name marked [`Zone::timeout`] the query is
//!    dropped (never answered); below [`Zone::servfail`] it is answered with
//!    SERVFAIL. When both apply, the closer (longer) marked name wins.
//! 2. A CNAME at the name answers every query type except CNAME itself; the
//!    chain is followed inside the zone and the target's records are added.
//! 3. Records of the asked type answer with TTL 3600 ([`POSITIVE_TTL`]).
//! 4. A name that exists (records of another type, or an empty non-terminal
//!    with descendants) answers NOERROR without answers (NODATA); any other
//!    name answers NXDOMAIN. Both carry a synthesized SOA in the authority
//!    section (apex: the query name's last two labels; TTL and minimum
//!    [`NEGATIVE_TTL`]) so that resolvers cache the negative answer.
//!
//! Every response sets AA, copies id, opcode, RD and the question. A query
//! with EDNS gets an OPT record advertising [`MAX_UDP_PAYLOAD`]; a UDP
//! response larger than the client's payload size (512 without EDNS) is
//! replaced by a truncated one (TC set, no records) so the client retries over
//! TCP.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use testkit::dns::{DnsServer, Zone};
//!
//! let mut zone = Zone::new();
//! zone.txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
//!     .a("mx.example.org", Ipv4Addr::new(192, 0, 2, 25))
//!     .servfail("broken.example.net");
//! let server = DnsServer::start(zone).unwrap();
//! let (config, opts) = testkit::dns::resolver_config(server.addr());
//! // hand `config` and `opts` to hickory-resolver / mail-auth ...
//! # let _ = (config, opts);
//! ```

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NULL, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// TTL of every positive answer, in seconds.
pub const POSITIVE_TTL: u32 = 3600;

/// TTL and SOA minimum of every negative answer (NXDOMAIN / NODATA), in seconds.
pub const NEGATIVE_TTL: u32 = 60;

/// The EDNS UDP payload size the server advertises and never exceeds over UDP
/// (the 2020 DNS flag day value, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// RR type code of the obsolete SPF record (RFC 4408, deprecated by RFC 7208).
/// hickory-proto has no variant for it, so it travels as an unknown type.
const SPF_RR_TYPE: u16 = 99;

/// Longest CNAME chain followed inside one answer; also stops CNAME loops.
const MAX_CNAME_CHAIN: usize = 8;

/// Maximum length of one TXT character-string (RFC 1035 §3.3: one length octet).
const MAX_CHARACTER_STRING: usize = 255;

/// How often blocked socket reads wake up to look at the shutdown flag. It
/// bounds how long dropping a [`DnsServer`] takes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How many times [`DnsServer::start`] tries a fresh port when the TCP port
/// matching the OS-chosen UDP port is already taken.
const BIND_ATTEMPTS: usize = 32;

/// Record data held by a [`Zone`], independent of hickory's types so the zone
/// stays a plain, cheaply cloneable value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Data {
    Txt(Vec<Vec<u8>>),
    Spf(Vec<Vec<u8>>),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, Name),
    Ptr(Name),
    Cname(Name),
}

impl Data {
    fn type_code(&self) -> u16 {
        match self {
            Data::Txt(_) => RecordType::TXT.into(),
            Data::Spf(_) => SPF_RR_TYPE,
            Data::A(_) => RecordType::A.into(),
            Data::Aaaa(_) => RecordType::AAAA.into(),
            Data::Mx(..) => RecordType::MX.into(),
            Data::Ptr(_) => RecordType::PTR.into(),
            Data::Cname(_) => RecordType::CNAME.into(),
        }
    }

    fn to_rdata(&self) -> RData {
        match self {
            Data::Txt(strings) => {
                RData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect()))
            }
            Data::Spf(strings) => {
                // Same RDATA layout as TXT: a sequence of <length><bytes>.
                let mut wire = Vec::new();
                for s in strings {
                    wire.push(s.len() as u8);
                    wire.extend_from_slice(s);
                }
                RData::Unknown {
                    code: RecordType::from(SPF_RR_TYPE),
                    rdata: NULL::with(wire),
                }
            }
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Mx(preference, exchange) => RData::MX(MX::new(*preference, exchange.clone())),
            Data::Ptr(target) => RData::PTR(PTR(target.clone())),
            Data::Cname(target) => RData::CNAME(CNAME(target.clone())),
        }
    }
}

/// A way for a name (and everything below it) to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServFail,
    Timeout,
}

/// The records a [`DnsServer`] serves.
///
/// Names are case-insensitive and fully qualified: `example.org` and
/// `Example.ORG.` are the same name. There is no `$ORIGIN` and no apex: every
/// name is given in full, and the server is authoritative for all of them.
///
/// A label may hold any visible characters DNS allows (RFC 2181 §11), such
/// as `:`, `/`, `%` or spaces, which the RFC 7208 test suite publishes:
/// names that hickory's host-name parser refuses are taken label by label.
///
/// The builder methods panic on a name or value that cannot be encoded in DNS
/// (for example a label longer than 63 bytes, or an empty one), since such a
/// zone is a bug in the test that builds it. [`Zone::parse`] reports the same
/// problems as errors instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    records: BTreeMap<Name, Vec<Data>>,
    faults: BTreeMap<Name, Fault>,
}

impl Zone {
    /// An empty zone: every name answers NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a TXT record. A `value` longer than 255 bytes is split into
    /// several character-strings of one record, as DKIM keys and long SPF
    /// policies are published; several calls for one name give several TXT
    /// records.
    pub fn txt(&mut self, name: &str, value: &str) -> &mut Self {
        let strings = split_character_strings(value.as_bytes());
        self.add(name, Data::Txt(strings))
    }

    /// Adds one TXT record made of exactly these character-strings, each of
    /// at most 255 bytes (RFC 7208 §3.3 and RFC 6376 §3.6.2.2 concatenate
    /// them without separator).
    ///
    /// # Panics
    ///
    /// If a string is longer than 255 bytes.
    pub fn txt_strings(&mut self, name: &str, strings: &[&str]) -> &mut Self {
        let strings = checked_character_strings(strings).unwrap_or_else(|e| panic!("{e}"));
        self.add(name, Data::Txt(strings))
    }

    /// Adds a record of the obsolete RR type SPF (99) with TXT-like data,
    /// split like [`Zone::txt`]. The RFC 7208 test suite publishes some
    /// policies this way to check that verifiers ignore them.
    pub fn spf_rr(&mut self, name: &str, value: &str) -> &mut Self {
        let strings = split_character_strings(value.as_bytes());
        self.add(name, Data::Spf(strings))
    }

    /// Adds an A record.
    pub fn a(&mut self, name: &str, ip: Ipv4Addr) -> &mut Self {
        self.add(name, Data::A(ip))
    }

    /// Adds an AAAA record.
    pub fn aaaa(&mut self, name: &str, ip: Ipv6Addr) -> &mut Self {
        self.add(name, Data::Aaaa(ip))
    }

    /// Adds an MX record pointing at `exchange`.
    pub fn mx(&mut self, name: &str, preference: u16, exchange: &str) -> &mut Self {
        let exchange = parse_name(exchange).unwrap_or_else(|e| panic!("{e}"));
        self.add(name, Data::Mx(preference, exchange))
    }

    /// Adds a PTR record. `name` is the reverse name, for example
    /// `1.2.0.192.in-addr.arpa` for 192.0.2.1; [`reverse_name`] builds it.
    pub fn ptr(&mut self, name: &str, target: &str) -> &mut Self {
        let target = parse_name(target).unwrap_or_else(|e| panic!("{e}"));
        self.add(name, Data::Ptr(target))
    }

    /// Adds a CNAME record. It answers queries of every type for `name`
    /// (records of other types at the same name, which RFC 1034 forbids, are
    /// shadowed by it except for CNAME queries).
    pub fn cname(&mut self, name: &str, target: &str) -> &mut Self {
        let target = parse_name(target).unwrap_or_else(|e| panic!("{e}"));
        self.add(name, Data::Cname(target))
    }

    /// Makes `name` and every name below it answer SERVFAIL, whatever
    /// records they have.
    pub fn servfail(&mut self, name: &str) -> &mut Self {
        self.fault(name, Fault::ServFail)
    }

    /// Makes the server drop every query for `name` and the names below it,
    /// so that resolvers run into their timeout.
    pub fn timeout(&mut self, name: &str) -> &mut Self {
        self.fault(name, Fault::Timeout)
    }

    /// Removes every record and fault marking of `name` (not of the names
    /// below it). Useful with [`DnsServer::update`].
    pub fn remove(&mut self, name: &str) -> &mut Self {
        let name = parse_name(name).unwrap_or_else(|e| panic!("{e}"));
        self.records.remove(&name);
        self.faults.remove(&name);
        self
    }

    /// Parses a zone from a tiny text format, one record a line:
    ///
    /// ```text
    /// # comment lines start with '#'
    /// example.org                 TXT   v=spf1 ip4:192.0.2.0/24 -all
    /// sel._domainkey.example.org  TXT   "v=DKIM1; k=ed25519; " "p=11qYAYKx..."
    /// example.org                 SPF   "v=spf1 -all"
    /// example.org                 MX    10 mx.example.org.
    /// mx.example.org              A     192.0.2.25
    /// mx.example.org              AAAA  2001:db8::25
    /// 25.2.0.192.in-addr.arpa     PTR   mx.example.org
    /// www.example.org             CNAME example.org
    /// broken.example.net          SERVFAIL
    /// slow.example.net            TIMEOUT
    /// ```
    ///
    /// The type is case-insensitive. A TXT or SPF value is either the rest of
    /// the line taken literally (then split at 255 bytes like [`Zone::txt`])
    /// or one or more double-quoted strings, each one character-string, with
    /// `\"` and `\\` escapes. A `#` after the value starts a comment, except
    /// in an unquoted TXT or SPF value, where it is data.
    pub fn parse(text: &str) -> Result<Zone, String> {
        let mut zone = Zone::new();
        for (index, line) in text.lines().enumerate() {
            zone.parse_line(line)
                .map_err(|e| format!("line {}: {e}", index + 1))?;
        }
        Ok(zone)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (name, rest) = split_word(line);
        let (kind, rest) = split_word(rest);
        if kind.is_empty() {
            return Err(format!("missing record type after {name:?}"));
        }
        let kind = kind.to_ascii_uppercase();
        let owner = parse_name(name)?;
        let data = match kind.as_str() {
            "TXT" | "SPF" => {
                let strings = if rest.starts_with('"') {
                    parse_quoted_strings(rest)?
                } else if rest.is_empty() {
                    return Err(format!("{kind} record without value"));
                } else {
                    split_character_strings(rest.as_bytes())
                };
                if kind == "TXT" {
                    Data::Txt(strings)
                } else {
                    Data::Spf(strings)
                }
            }
            "A" => Data::A(
                single_value(rest)?
                    .parse()
                    .map_err(|e| format!("bad IPv4 address: {e}"))?,
            ),
            "AAAA" => Data::Aaaa(
                single_value(rest)?
                    .parse()
                    .map_err(|e| format!("bad IPv6 address: {e}"))?,
            ),
            "MX" => {
                let value = strip_comment(rest);
                let mut words = value.split_whitespace();
                let (Some(preference), Some(exchange), None) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err(format!("MX value must be `PREFERENCE EXCHANGE`: {value:?}"));
                };
                let preference = preference
                    .parse()
                    .map_err(|e| format!("bad MX preference {preference:?}: {e}"))?;
                Data::Mx(preference, parse_name(exchange)?)
            }
            "PTR" => Data::Ptr(parse_name(single_value(rest)?)?),
            "CNAME" => Data::Cname(parse_name(single_value(rest)?)?),
            "SERVFAIL" | "TIMEOUT" => {
                if !strip_comment(rest).is_empty() {
                    return Err(format!("{kind} takes no value"));
                }
                let fault = if kind == "SERVFAIL" {
                    Fault::ServFail
                } else {
                    Fault::Timeout
                };
                self.faults.insert(owner, fault);
                return Ok(());
            }
            other => return Err(format!("unknown record type {other:?}")),
        };
        self.records.entry(owner).or_default().push(data);
        Ok(())
    }

    fn add(&mut self, name: &str, data: Data) -> &mut Self {
        let name = parse_name(name).unwrap_or_else(|e| panic!("{e}"));
        self.records.entry(name).or_default().push(data);
        self
    }

    fn fault(&mut self, name: &str, fault: Fault) -> &mut Self {
        let name = parse_name(name).unwrap_or_else(|e| panic!("{e}"));
        self.faults.insert(name, fault);
        self
    }

    /// The fault marking that governs `name`: the one on the closest
    /// enclosing marked name, if any.
    fn fault_for(&self, name: &Name) -> Option<Fault> {
        if self.faults.is_empty() {
            return None;
        }
        (0..=name.num_labels())
            .rev()
            .find_map(|labels| self.faults.get(&name.trim_to(labels as usize)).copied())
    }

    /// Whether some record lives strictly below `name` (which makes `name`
    /// an empty non-terminal if it has no records itself).
    fn has_descendants(&self, name: &Name) -> bool {
        self.records
            .keys()
            .any(|owner| owner.num_labels() > name.num_labels() && name.zone_of(owner))
    }

    /// Looks `query` up, or returns `None` when the query must be dropped.
    fn resolve(&self, query: &Query) -> Option<Resolution> {
        let qtype = u16::from(query.query_type());
        let any = qtype == u16::from(RecordType::ANY);
        let mut owner = query.name().clone();
        let mut answers = Vec::new();

        for hop in 0..MAX_CNAME_CHAIN {
            let key = owner.to_lowercase();
            if let Some(fault) = self.fault_for(&key) {
                if hop > 0 {
                    // Only the start of the chain is ours to fail; hand back
                    // the CNAMEs so far, as an authoritative server does when
                    // the target is outside its data.
                    break;
                }
                return match fault {
                    Fault::Timeout => None,
                    Fault::ServFail => Some(Resolution::error(ResponseCode::ServFail)),
                };
            }

            let Some(records) = self.records.get(&key) else {
                let code = if self.has_descendants(&key) {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                return Some(Resolution::negative(code, answers, &key));
            };

            let cname = records.iter().find_map(|data| match data {
                Data::Cname(target) => Some(target),
                _ => None,
            });
            if let Some(target) = cname
                && qtype != u16::from(RecordType::CNAME)
                && !any
            {
                answers.push(Record::from_rdata(
                    owner.clone(),
                    POSITIVE_TTL,
                    RData::CNAME(CNAME(target.clone())),
                ));
                owner = target.clone();
                continue;
            }

            let before = answers.len();
            answers.extend(
                records
                    .iter()
                    .filter(|data| any || data.type_code() == qtype)
                    .map(|data| Record::from_rdata(owner.clone(), POSITIVE_TTL, data.to_rdata())),
            );
            if answers.len() == before {
                return Some(Resolution::negative(ResponseCode::NoError, answers, &key));
            }
            break;
        }
        Some(Resolution {
            code: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
        })
    }
}

/// The content of a response, before it is put into a [`Message`].
struct Resolution {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Resolution {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }

    /// NXDOMAIN or NODATA for `name`, after the CNAMEs (if any) that led
    /// there, with the SOA that makes it cacheable (RFC 2308 §3).
    fn negative(code: ResponseCode, answers: Vec<Record>, name: &Name) -> Self {
        Self {
            code,
            answers,
            authorities: vec![synthesized_soa(name)],
        }
    }
}

/// An SOA for the "zone" of `name`, taken to be its last two labels.
fn synthesized_soa(name: &Name) -> Record {
    let apex = name.trim_to(usize::from(name.num_labels().min(2)));
    let under_apex = |label: &str| {
        Name::from_ascii(label)
            .and_then(|n| n.append_domain(&apex))
            .unwrap_or_else(|_| apex.clone())
    };
    let soa = SOA::new(
        under_apex("ns"),
        under_apex("hostmaster"),
        1,
        3600,
        600,
        86400,
        NEGATIVE_TTL,
    );
    Record::from_rdata(apex.clone(), NEGATIVE_TTL, RData::SOA(soa))
}

/// Parses a user-supplied name into the zone's key form: fully qualified and
/// lower case, so that lookups are case-insensitive.
fn parse_name(name: &str) -> Result<Name, String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("empty domain name".to_owned());
    }
    let mut parsed = Name::from_ascii(trimmed)
        .or_else(|_| raw_name(trimmed))
        .map_err(|e| format!("bad domain name {trimmed:?}: {e}"))?;
    parsed.set_fqdn(true);
    Ok(parsed.to_lowercase())
}

/// A name whose labels are taken as raw bytes, split at each `.` (one
/// trailing dot allowed): for labels with characters that are legal in DNS
/// but not in host names, such as `foo:bar/baz`.
fn raw_name(name: &str) -> Result<Name, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    Name::from_labels(name.split('.').map(str::as_bytes)).map_err(|e| e.to_string())
}

/// Splits bytes into character-strings of at most 255 bytes (an empty value
/// becomes one empty string).
fn split_character_strings(value: &[u8]) -> Vec<Vec<u8>> {
    if value.is_empty() {
        return vec![Vec::new()];
    }
    value
        .chunks(MAX_CHARACTER_STRING)
        .map(<[u8]>::to_vec)
        .collect()
}

fn checked_character_strings(strings: &[&str]) -> Result<Vec<Vec<u8>>, String> {
    if strings.is_empty() {
        return Err("a TXT record needs at least one character-string".to_owned());
    }
    strings
        .iter()
        .map(|s| {
            if s.len() > MAX_CHARACTER_STRING {
                Err(format!(
                    "TXT character-string of {} bytes exceeds {MAX_CHARACTER_STRING}",
                    s.len()
                ))
            } else {
                Ok(s.as_bytes().to_vec())
            }
        })
        .collect()
}

/// Splits off the first whitespace-delimited word; returns it and the
/// trimmed rest.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim()),
        None => (text, ""),
    }
}

fn strip_comment(text: &str) -> &str {
    text.split_once('#').map_or(text, |(value, _)| value).trim()
}

fn single_value(text: &str) -> Result<&str, String> {
    let value = strip_comment(text);
    match value.split_whitespace().count() {
        1 => Ok(value),
        0 => Err("missing value".to_owned()),
        _ => Err(format!("expected a single value, got {value:?}")),
    }
}

/// Parses `"a" "b\"c"  # comment` into character-strings.
fn parse_quoted_strings(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut strings = Vec::new();
    let mut chars = text.chars();
    loop {
        match chars.by_ref().find(|c| !c.is_whitespace()) {
            None => break,
            Some('#') => break,
            Some('"') => {}
            Some(other) => {
                return Err(format!("unexpected {other:?} between quoted strings"));
            }
        }
        let mut current = String::new();
        loop {
            match chars.next() {
                None => return Err("unterminated quoted string".to_owned()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(escaped) => current.push(escaped),
                    None => return Err("dangling backslash".to_owned()),
                },
                Some(c) => current.push(c),
            }
        }
        if current.len() > MAX_CHARACTER_STRING {
            return Err(format!(
                "quoted string of {} bytes exceeds {MAX_CHARACTER_STRING}",
                current.len()
            ));
        }
        strings.push(current.into_bytes());
    }
    Ok(strings)
}

/// The reverse-lookup name of an address (`1.2.0.192.in-addr.arpa.` for
/// 192.0.2.1, nibble format under `ip6.arpa.` for IPv6), for [`Zone::ptr`].
pub fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        std::net::IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

/// Resolver settings that send every query to `addr` (UDP first, TCP after a
/// truncated answer), for `mail_auth::MessageAuthenticator::new` or a
/// hickory `Resolver` builder.
///
/// Options: a 2 s timeout and a single try, so that a [`Zone::timeout`]
/// name fails after about two seconds (hickory's defaults take 15 s);
/// hickory's response cache on (default size), so tests can observe caching
/// through [`DnsServer::queries`]; the hosts file ignored, so that only the
/// zone decides. Everything else is hickory's default (EDNS on, no search
/// domains, ndots 1). Adjust the returned values for tests that need
/// otherwise, for example a shorter timeout.
///
/// Note hickory's meaning of `ResolverOpts::attempts`: the number of
/// *retries* after a failed try (timeout, SERVFAIL, I/O error; not NXDOMAIN
/// or NODATA). It is set to 0 here; with 1 every failure costs two tries and
/// a timeout twice the time. Within one try hickory also resends a UDP query
/// every 333 ms until the timeout, so a dropped query is counted several
/// times by [`DnsServer::queries`].
pub fn resolver_config(addr: SocketAddr) -> (ResolverConfig, ResolverOpts) {
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);

    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    (config, opts)
}

/// State shared by the server handle and its threads.
struct Shared {
    zone: RwLock<Zone>,
    stop: AtomicBool,
    queries: AtomicU64,
    tcp_queries: AtomicU64,
}

impl Shared {
    /// Builds the wire response to one request, or `None` to stay silent.
    fn respond(&self, request: &[u8], udp: bool) -> Option<Vec<u8>> {
        let message = match Message::from_vec(request) {
            Ok(message) => message,
            Err(_) => return format_error(request),
        };
        if message.metadata.message_type != MessageType::Query {
            // Never answer a response: that could loop between two servers.
            return None;
        }
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !udp {
            self.tcp_queries.fetch_add(1, Ordering::Relaxed);
        }

        let mut response = Message::response(message.metadata.id, message.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = message.metadata.recursion_desired;
        response.metadata.checking_disabled = message.metadata.checking_disabled;
        response.add_queries(message.queries.iter().cloned());
        if let Some(request_edns) = &message.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
            response.set_edns(edns);
            if request_edns.version() > 0 {
                // RFC 6891 §6.1.3: we only speak EDNS version 0.
                response.metadata.response_code = ResponseCode::BADVERS;
                return encode(&response, &message, udp);
            }
        }

        let resolution = match (message.metadata.op_code, message.queries.as_slice()) {
            (OpCode::Query, [query])
                if matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) =>
            {
                let zone = self.zone.read().unwrap_or_else(PoisonError::into_inner);
                zone.resolve(query)?
            }
            (OpCode::Query, [_]) => Resolution::error(ResponseCode::Refused),
            (OpCode::Query, _) => Resolution::error(ResponseCode::FormErr),
            _ => Resolution::error(ResponseCode::NotImp),
        };
        response.metadata.response_code = resolution.code;
        response.answers = resolution.answers;
        response.authorities = resolution.authorities;
        encode(&response, &message, udp)
    }
}

/// Serializes `response`, truncating it if it does not fit the requester's
/// UDP payload size.
fn encode(response: &Message, request: &Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if !udp {
        return Some(bytes);
    }
    // RFC 6891 §6.2.5: values under 512 mean 512; we cap at what we advertise.
    let limit = request.edns.as_ref().map_or(512, |edns| {
        usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD))
    });
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // RFC 2181 §9: send no partial RRset; an empty TC answer makes the client
    // retry over TCP, which is what the tests want to exercise.
    response.truncate().to_vec().ok()
}

/// A header-only FORMERR answer for a request that does not parse, if at
/// least its header is there to take the id from.
fn format_error(request: &[u8]) -> Option<Vec<u8>> {
    let header = request.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None; // a response, not a query
    }
    let mut response = vec![0; 12];
    response[..2].copy_from_slice(&header[..2]);
    // QR=1, opcode and RD copied, RCODE=FORMERR.
    response[2] = 0x80 | (header[2] & 0x79);
    response[3] = ResponseCode::FormErr.low();
    Some(response)
}

/// A running DNS server serving a [`Zone`] on 127.0.0.1, UDP and TCP on the
/// same port. Dropping it stops the server and joins its threads (within
/// about 50 ms).
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    udp_thread: Option<JoinHandle<()>>,
    tcp_thread: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl DnsServer {
    /// Starts serving `zone` on an OS-chosen port of 127.0.0.1.
    ///
    /// The port is chosen by binding UDP first; if that port is already taken
    /// for TCP, another one is tried.
    pub fn start(zone: Zone) -> io::Result<DnsServer> {
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
            let port = udp.local_addr()?.port();
            match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
                Ok(tcp) => return Self::serve(zone, udp, tcp),
                Err(e) if e.kind() == ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// Starts serving `zone` on `port` of 127.0.0.1 (UDP and TCP); port 0
    /// behaves like [`DnsServer::start`].
    pub fn start_on(zone: Zone, port: u16) -> io::Result<DnsServer> {
        if port == 0 {
            return Self::start(zone);
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let udp = UdpSocket::bind(addr)?;
        let tcp = TcpListener::bind(addr)?;
        Self::serve(zone, udp, tcp)
    }

    fn serve(zone: Zone, udp: UdpSocket, tcp: TcpListener) -> io::Result<DnsServer> {
        let addr = udp.local_addr()?;
        udp.set_read_timeout(Some(POLL_INTERVAL))?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(zone),
            stop: AtomicBool::new(false),
            queries: AtomicU64::new(0),
            tcp_queries: AtomicU64::new(0),
        });
        let connections = Arc::new(Mutex::new(Vec::new()));

        let udp_thread = thread::Builder::new()
            .name(format!("testkit-dns-udp-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve_udp(&udp, &shared)
            })?;
        let tcp_thread = thread::Builder::new()
            .name(format!("testkit-dns-tcp-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                let connections = Arc::clone(&connections);
                move || serve_tcp(&tcp, &shared, &connections)
            });
        let tcp_thread = match tcp_thread {
            Ok(handle) => handle,
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                let _ = udp_thread.join();
                return Err(e);
            }
        };

        Ok(DnsServer {
            addr,
            shared,
            udp_thread: Some(udp_thread),
            tcp_thread: Some(tcp_thread),
            connections,
        })
    }

    /// The address the server listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the zone while the server runs; queries after the call see
    /// the change (resolver caches may of course still hold old answers).
    pub fn update(&self, f: impl FnOnce(&mut Zone)) {
        let mut zone = self
            .shared
            .zone
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut zone);
    }

    /// How many queries arrived so far, over UDP and TCP, whether answered
    /// or dropped. A truncated UDP answer followed by the client's TCP retry
    /// counts twice.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// How many of [`DnsServer::queries`] came over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.shared.tcp_queries.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(): a connection of our own wakes
        // it up to see the flag. Should that fail, leave the thread detached
        // rather than hang the test in join().
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(handle) = self.tcp_thread.take()
            && woke
        {
            let _ = handle.join();
        }
        if let Some(handle) = self.udp_thread.take() {
            let _ = handle.join();
        }
        let connections = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handle in connections {
            let _ = handle.join();
        }
    }
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; 65535];
    while !shared.stop.load(Ordering::SeqCst) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
            // ICMP port-unreachable from an earlier reply can surface here on
            // some systems; it concerns that peer only, so keep serving.
            Err(_) => continue,
        };
        if let Some(response) = shared.respond(&buf[..len], true) {
            let _ = socket.send_to(&response, peer);
        }
    }
}

fn serve_tcp(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    connections: &Mutex<Vec<JoinHandle<()>>>,
) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let handle = thread::Builder::new()
            .name("testkit-dns-conn".to_owned())
            .spawn({
                let shared = Arc::clone(shared);
                move || serve_connection(stream, &shared)
            });
        let mut connections = connections.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap finished connection threads so a long benchmark does not
        // accumulate handles.
        connections.retain(|h| !h.is_finished());
        if let Ok(handle) = handle {
            connections.push(handle);
        }
    }
}

/// Serves one TCP connection: any number of length-prefixed queries, answered
/// in order, until the client closes it or the server stops.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    if stream.set_read_timeout(Some(POLL_INTERVAL)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    loop {
        let mut prefix = [0u8; 2];
        if !read_full(&mut stream, &mut prefix, &shared.stop) {
            break;
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if !read_full(&mut stream, &mut request, &shared.stop) {
            break;
        }
        let Some(response) = shared.respond(&request, false) else {
            continue; // dropped on purpose (TIMEOUT): keep the connection
        };
        let Ok(len) = u16::try_from(response.len()) else {
            break; // cannot happen for our zones; never send a bad frame
        };
        let mut frame = Vec::with_capacity(response.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&response);
        if stream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Fills `buf` from a stream with a read timeout, checking `stop` at every
/// timeout. Returns false on end of stream, error or stop.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, rtype: RecordType) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), rtype)
    }

    #[test]
    fn labels_may_hold_any_visible_characters() {
        let mut zone = Zone::new();
        zone.a("Foo:Bar/baz.example.com", Ipv4Addr::new(192, 0, 2, 1))
            .a(
                "macro%percent  space.example.com",
                Ipv4Addr::new(192, 0, 2, 2),
            );
        for (labels, addr) in [
            (
                &[&b"foo:bar/baz"[..], b"example", b"com"],
                Ipv4Addr::new(192, 0, 2, 1),
            ),
            (
                &[&b"macro%percent  space"[..], b"example", b"com"],
                Ipv4Addr::new(192, 0, 2, 2),
            ),
        ] {
            let name = Name::from_labels(labels.iter().copied()).unwrap();
            let resolution = zone.resolve(&Query::query(name, RecordType::A)).unwrap();
            assert_eq!(resolution.answers.len(), 1);
            assert_eq!(resolution.answers[0].data, RData::A(A(addr)));
        }
        assert!(parse_name("a..example.com").is_err());
        assert!(parse_name(&format!("{}.example.com", "x".repeat(64))).is_err());
    }

    #[test]
    fn names_are_case_insensitive_and_fully_qualified() {
        let mut zone = Zone::new();
        zone.a("Host.Example.ORG", Ipv4Addr::new(192, 0, 2, 1));
        let resolution = zone
            .resolve(&query("host.example.org.", RecordType::A))
            .unwrap();
        assert_eq!(resolution.code, ResponseCode::NoError);
        assert_eq!(resolution.answers.len(), 1);
        let resolution = zone
            .resolve(&query("HOST.example.org.", RecordType::A))
            .unwrap();
        assert_eq!(resolution.answers.len(), 1);
        // The owner keeps the case of the question (0x20 randomization).
        assert_eq!(resolution.answers[0].name.to_ascii(), "HOST.example.org.");
    }

    #[test]
    fn negative_answers_distinguish_nxdomain_nodata_and_empty_non_terminals() {
        let mut zone = Zone::new();
        zone.txt("sel._domainkey.example.org", "v=DKIM1; p=");
        let nx = zone
            .resolve(&query("nope.example.org.", RecordType::TXT))
            .unwrap();
        assert_eq!(nx.code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities.len(), 1);
        assert_eq!(nx.authorities[0].name.to_ascii(), "example.org.");
        let nodata = zone
            .resolve(&query("sel._domainkey.example.org.", RecordType::A))
            .unwrap();
        assert_eq!(nodata.code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1);
        let ent = zone
            .resolve(&query("_domainkey.example.org.", RecordType::TXT))
            .unwrap();
        assert_eq!(ent.code, ResponseCode::NoError);
        let ent = zone
            .resolve(&query("example.org.", RecordType::TXT))
            .unwrap();
        assert_eq!(ent.code, ResponseCode::NoError);
    }

    #[test]
    fn faults_cover_the_subtree_and_the_closest_one_wins() {
        let mut zone = Zone::new();
        zone.servfail("example.net")
            .timeout("slow.example.net")
            .a("ok.example.org", Ipv4Addr::new(192, 0, 2, 1));
        let r = zone
            .resolve(&query("a.b.example.net.", RecordType::TXT))
            .unwrap();
        assert_eq!(r.code, ResponseCode::ServFail);
        assert!(
            zone.resolve(&query("x.slow.example.net.", RecordType::TXT))
                .is_none()
        );
        assert!(
            zone.resolve(&query("example.org.", RecordType::A))
                .is_some()
        );
    }

    #[test]
    fn cname_answers_every_type_and_is_followed() {
        let mut zone = Zone::new();
        zone.cname("www.example.org", "web.example.org")
            .a("web.example.org", Ipv4Addr::new(192, 0, 2, 80));
        let r = zone
            .resolve(&query("www.example.org.", RecordType::A))
            .unwrap();
        assert_eq!(r.code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 2);
        let r = zone
            .resolve(&query("www.example.org.", RecordType::CNAME))
            .unwrap();
        assert_eq!(r.answers.len(), 1);
        let r = zone
            .resolve(&query("www.example.org.", RecordType::TXT))
            .unwrap();
        assert_eq!((r.code, r.answers.len()), (ResponseCode::NoError, 1));
        zone.cname("loop.example.org", "loop.example.org");
        let r = zone
            .resolve(&query("loop.example.org.", RecordType::A))
            .unwrap();
        assert_eq!(r.answers.len(), MAX_CNAME_CHAIN);
    }

    #[test]
    fn long_txt_values_are_split_into_character_strings() {
        let mut zone = Zone::new();
        let value = "x".repeat(600);
        zone.txt("long.example.org", &value);
        let r = zone
            .resolve(&query("long.example.org.", RecordType::TXT))
            .unwrap();
        let RData::TXT(txt) = &r.answers[0].data else {
            panic!("not TXT")
        };
        let lengths: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
        assert_eq!(lengths, [255, 255, 90]);
    }

    #[test]
    #[should_panic(expected = "exceeds 255")]
    fn txt_strings_rejects_oversized_strings() {
        Zone::new().txt_strings("example.org", &[&"x".repeat(256)]);
    }

    #[test]
    fn parses_the_text_format() {
        let text = r#"
            # a comment
            example.org   TXT   v=spf1 ip4:192.0.2.0/24 -all # not a comment
            Example.org   spf   "v=spf1 " "-all"   # a comment
            sel._domainkey.example.org TXT "a \"quoted\" \\ string"
            example.org   MX    10 mx.example.org.  # comment
            mx.example.org A    192.0.2.25
            mx.example.org AAAA 2001:db8::25
            25.2.0.192.in-addr.arpa PTR mx.example.org
            www.example.org CNAME example.org
            broken.example.net SERVFAIL
            slow.example.net   timeout
        "#;
        let zone = Zone::parse(text).unwrap();
        let mut expected = Zone::new();
        expected
            .txt(
                "example.org",
                "v=spf1 ip4:192.0.2.0/24 -all # not a comment",
            )
            .add(
                "example.org",
                Data::Spf(vec![b"v=spf1 ".to_vec(), b"-all".to_vec()]),
            )
            .txt("sel._domainkey.example.org", r#"a "quoted" \ string"#)
            .mx("example.org", 10, "mx.example.org")
            .a("mx.example.org", Ipv4Addr::new(192, 0, 2, 25))
            .aaaa("mx.example.org", "2001:db8::25".parse().unwrap())
            .ptr("25.2.0.192.in-addr.arpa", "mx.example.org")
            .cname("www.example.org", "example.org")
            .servfail("broken.example.net")
            .timeout("slow.example.net");
        assert_eq!(zone, expected);
    }

    #[test]
    fn parse_reports_errors_with_line_numbers() {
        for (text, needle) in [
            ("example.org", "line 1: missing record type"),
            ("\nexample.org BOGUS x", "line 2: unknown record type"),
            ("example.org A 192.0.2.300", "bad IPv4"),
            ("example.org MX mx.example.org", "PREFERENCE EXCHANGE"),
            ("example.org TXT \"open", "unterminated"),
            ("example.org SERVFAIL now", "takes no value"),
            ("example.org TXT", "without value"),
        ] {
            let err = Zone::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }

    #[test]
    fn garbage_gets_formerr_and_responses_are_ignored() {
        let shared = Shared {
            zone: RwLock::new(Zone::new()),
            stop: AtomicBool::new(false),
            queries: AtomicU64::new(0),
            tcp_queries: AtomicU64::new(0),
        };
        let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0, 5];
        garbage.extend_from_slice(&[0xff; 20]);
        let response = shared.respond(&garbage, true).unwrap();
        assert_eq!(&response[..4], &[0x12, 0x34, 0x81, 0x01]);
        assert!(shared.respond(&[1, 2], true).is_none());
        let mut as_response = Message::response(7, OpCode::Query);
        as_response.add_query(query("example.org.", RecordType::A));
        assert!(
            shared
                .respond(&as_response.to_vec().unwrap(), true)
                .is_none()
        );
    }
}
