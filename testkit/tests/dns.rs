//! The DNS server against real clients: hickory-resolver (the resolver
//! mail-auth and the daemon use), mail-auth itself, and hand-made packets
//! for the wire details a resolver hides (EDNS, TC, TCP framing).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{DnsError, Error, MessageAuthenticator, SpfResult};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::dns::{DnsServer, Zone, resolver_config, reverse_name};

fn authenticator(server: &DnsServer) -> MessageAuthenticator {
    let (config, opts) = resolver_config(server.addr());
    MessageAuthenticator::new(config, opts).expect("build resolver")
}

fn authenticator_with_timeout(server: &DnsServer, timeout: Duration) -> MessageAuthenticator {
    let (config, mut opts) = resolver_config(server.addr());
    opts.timeout = timeout;
    MessageAuthenticator::new(config, opts).expect("build resolver")
}

fn resolver(auth: &MessageAuthenticator) -> &TokioResolver {
    auth.resolver()
}

/// The TXT records of `name`, each as its list of character-strings.
async fn txt(auth: &MessageAuthenticator, name: &str) -> Vec<Vec<String>> {
    let lookup = resolver(auth).txt_lookup(name).await.expect("TXT lookup");
    let mut records: Vec<Vec<String>> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    records.sort();
    records
}

/// The response code of a lookup that found nothing.
fn no_records_code(err: &NetError) -> Option<ResponseCode> {
    match err {
        NetError::Dns(HickoryDnsError::NoRecordsFound(no)) => Some(no.response_code),
        _ => None,
    }
}

#[tokio::test]
async fn txt_records_short_long_multi_string_and_several() {
    let long = "k".repeat(700);
    let mut zone = Zone::new();
    zone.txt("short.example.org", "v=spf1 -all")
        .txt("long.example.org", &long)
        .txt_strings("multi.example.org", &["v=DKIM1; k=rsa; ", "p=AAAA"])
        .txt("several.example.org", "one")
        .txt("several.example.org", "two");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);

    assert_eq!(txt(&auth, "short.example.org.").await, [["v=spf1 -all"]]);
    let long_records = txt(&auth, "long.example.org.").await;
    assert_eq!(long_records.len(), 1);
    assert_eq!(
        long_records[0].iter().map(String::len).collect::<Vec<_>>(),
        [255, 255, 190]
    );
    assert_eq!(long_records[0].concat(), long);
    assert_eq!(
        txt(&auth, "multi.example.org.").await,
        [["v=DKIM1; k=rsa; ", "p=AAAA"]]
    );
    assert_eq!(txt(&auth, "several.example.org.").await, [["one"], ["two"]]);

    // mail-auth's raw lookup concatenates the strings of a record.
    let raw = auth.txt_raw_lookup("long.example.org.").await.unwrap();
    assert_eq!(raw, long.as_bytes());
}

#[tokio::test]
async fn address_mail_exchanger_pointer_and_alias_records() {
    let v4 = Ipv4Addr::new(192, 0, 2, 25);
    let v6: Ipv6Addr = "2001:db8::25".parse().unwrap();
    let mut zone = Zone::new();
    zone.a("mx.example.org", v4)
        .aaaa("mx.example.org", v6)
        .mx("example.org", 10, "mx.example.org")
        .mx("example.org", 20, "backup.example.net.")
        .ptr(&reverse_name(IpAddr::V4(v4)), "mx.example.org")
        .ptr(&reverse_name(IpAddr::V6(v6)), "mx.example.org")
        .cname("www.example.org", "mx.example.org");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);
    let resolver = resolver(&auth);

    let a = resolver.ipv4_lookup("mx.example.org.").await.unwrap();
    assert!(matches!(&a.answers()[0].data, RData::A(ip) if ip.0 == v4));
    assert_eq!(a.answers()[0].ttl, testkit::dns::POSITIVE_TTL);
    let aaaa = resolver.ipv6_lookup("MX.Example.Org.").await.unwrap();
    assert!(matches!(&aaaa.answers()[0].data, RData::AAAA(ip) if ip.0 == v6));

    let mx = resolver.mx_lookup("example.org.").await.unwrap();
    let mut exchanges: Vec<(u16, String)> = mx
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    exchanges.sort();
    assert_eq!(
        exchanges,
        [
            (10, "mx.example.org.".to_owned()),
            (20, "backup.example.net.".to_owned())
        ]
    );

    for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        let ptr = resolver.reverse_lookup(ip).await.unwrap();
        assert!(
            matches!(&ptr.answers()[0].data, RData::PTR(name) if name.0.to_ascii() == "mx.example.org."),
            "{ip}"
        );
    }

    // A CNAME answers the A query; the resolver follows it to the address.
    let via_alias = resolver.ipv4_lookup("www.example.org.").await.unwrap();
    assert!(
        via_alias
            .answers()
            .iter()
            .any(|r| matches!(&r.data, RData::A(ip) if ip.0 == v4))
    );
    // Through mail-auth, as SPF's a/mx mechanisms see it.
    let ips = auth
        .ipv4_lookup_raw("www.example.org.")
        .await
        .unwrap()
        .entry;
    assert_eq!(&*ips, [v4]);
}

#[tokio::test]
async fn spf_rr_type_99_is_served() {
    let mut zone = Zone::new();
    zone.spf_rr("example.org", "v=spf1 -all");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);
    let lookup = resolver(&auth)
        .lookup("example.org.", RecordType::from(99))
        .await
        .unwrap();
    let RData::Unknown { code, rdata } = &lookup.answers()[0].data else {
        panic!("unexpected {:?}", lookup.answers()[0].data)
    };
    assert_eq!(u16::from(*code), 99);
    assert_eq!(rdata.anything, b"\x0bv=spf1 -all");
    // A TXT query for the same name is NODATA: SPF-type records are not TXT.
    let err = resolver(&auth)
        .txt_lookup("example.org.")
        .await
        .unwrap_err();
    assert_eq!(no_records_code(&err), Some(ResponseCode::NoError));
}

#[tokio::test]
async fn negative_answers_and_how_mail_auth_reports_them() {
    let mut zone = Zone::new();
    zone.a("host.example.org", Ipv4Addr::new(192, 0, 2, 1))
        .txt("sel._domainkey.example.org", "v=DKIM1; p=");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);
    let resolver = resolver(&auth);

    // hickory: NXDOMAIN and NODATA are both NoRecordsFound, told apart by the
    // response code, with the SOA's negative TTL.
    let err = resolver
        .txt_lookup("missing.example.org.")
        .await
        .unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NXDomain),
        "{err:?}"
    );
    let err = resolver.txt_lookup("host.example.org.").await.unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NoError),
        "{err:?}"
    );
    // Empty non-terminal: exists, so NODATA rather than NXDOMAIN.
    let err = resolver
        .txt_lookup("_domainkey.example.org.")
        .await
        .unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NoError),
        "{err:?}"
    );
    if let NetError::Dns(HickoryDnsError::NoRecordsFound(no)) = &err {
        assert_eq!(no.negative_ttl, Some(testkit::dns::NEGATIVE_TTL));
        assert!(no.soa.is_some());
    }

    // mail-auth maps both to RecordNotFound(code).
    assert_eq!(
        auth.txt_raw_lookup("missing.example.org.")
            .await
            .unwrap_err(),
        Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain))
    );
    assert_eq!(
        auth.txt_raw_lookup("host.example.org.").await.unwrap_err(),
        Error::Dns(DnsError::RecordNotFound(ResponseCode::NoError))
    );
}

#[tokio::test]
async fn servfail_is_a_quick_resolver_error() {
    let mut zone = Zone::new();
    zone.servfail("broken.example.net")
        .txt("deep.broken.example.net", "never served");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);

    let started = Instant::now();
    let err = resolver(&auth)
        .txt_lookup("deep.broken.example.net.")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{err:?}"
    );
    let err = auth
        .txt_raw_lookup("broken.example.net.")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    let Error::Dns(DnsError::Resolver(message)) = &err else {
        panic!("unexpected {err:?}")
    };
    assert_eq!(message, "DNS error: error response: Server Failure");
    assert_eq!(server.queries(), 2, "one query per lookup, no retry");
}

#[tokio::test]
async fn timeout_names_make_the_resolver_time_out() {
    let mut zone = Zone::new();
    zone.timeout("slow.example.net");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator_with_timeout(&server, Duration::from_millis(500));

    let started = Instant::now();
    let err = resolver(&auth)
        .txt_lookup("x.slow.example.net.")
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    // One try (attempts = 0) that lasts the timeout...
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(950),
        "{elapsed:?}"
    );
    // ...during which hickory resends the UDP query after 333 ms.
    assert_eq!(server.queries(), 2);
    assert_eq!(server.tcp_queries(), 0);

    let err = auth.txt_raw_lookup("slow.example.net.").await.unwrap_err();
    assert_eq!(
        err,
        Error::Dns(DnsError::Resolver("request timed out".to_owned()))
    );
}

#[tokio::test]
async fn hickory_attempts_counts_retries_not_tries() {
    let mut zone = Zone::new();
    zone.timeout("slow.example.net")
        .servfail("broken.example.net");
    let server = DnsServer::start(zone).unwrap();
    let (config, mut opts) = resolver_config(server.addr());
    // Well under hickory's 333 ms UDP resend, so each try sends one packet.
    opts.timeout = Duration::from_millis(200);
    opts.attempts = 1;
    let auth = MessageAuthenticator::new(config, opts).unwrap();

    let started = Instant::now();
    let err = auth.txt_raw_lookup("slow.example.net.").await.unwrap_err();
    assert!(matches!(err, Error::Dns(DnsError::Resolver(_))), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(server.queries(), 2, "attempts = 1 is two tries");

    let err = auth
        .txt_raw_lookup("broken.example.net.")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Dns(DnsError::Resolver(_))), "{err:?}");
    assert_eq!(server.queries(), 4, "SERVFAIL is retried too");
}

#[tokio::test]
async fn spf_results_for_each_kind_of_dns_trouble() {
    let mut zone = Zone::new();
    zone.txt("good.example.org", "v=spf1 ip4:192.0.2.0/24 -all")
        .a("nospf.example.org", Ipv4Addr::new(192, 0, 2, 1))
        .servfail("servfail.example.org")
        .timeout("timeout.example.org");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator_with_timeout(&server, Duration::from_millis(500));
    let ip: IpAddr = "192.0.2.7".parse().unwrap();

    let spf = |domain: &'static str| {
        let auth = &auth;
        async move {
            let sender = format!("user@{domain}");
            auth.verify_spf(SpfParameters::verify_mail_from(
                ip,
                "mx.example.net",
                "intake.example.net",
                &sender,
            ))
            .await
            .result()
        }
    };
    assert_eq!(spf("good.example.org").await, SpfResult::Pass);
    assert_eq!(spf("nospf.example.org").await, SpfResult::None); // NODATA
    assert_eq!(spf("missing.example.org").await, SpfResult::None); // NXDOMAIN
    assert_eq!(spf("servfail.example.org").await, SpfResult::TempError);
    assert_eq!(spf("timeout.example.org").await, SpfResult::TempError);
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_retried_over_tcp() {
    let mut zone = Zone::new();
    let values: Vec<String> = (0..8).map(|i| format!("{i}{}", "t".repeat(400))).collect();
    for value in &values {
        zone.txt("big.example.org", value);
    }
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);

    let records = txt(&auth, "big.example.org.").await;
    let mut got: Vec<String> = records.iter().map(|r| r.concat()).collect();
    got.sort();
    assert_eq!(got, values);
    assert_eq!(server.queries(), 2, "one UDP query, one TCP retry");
    assert_eq!(server.tcp_queries(), 1);
}

#[tokio::test]
async fn answers_are_cached_by_the_resolver_and_updates_are_seen() {
    let mut zone = Zone::new();
    zone.txt("cached.example.org", "v1");
    let server = DnsServer::start(zone).unwrap();
    let auth = authenticator(&server);

    assert_eq!(txt(&auth, "cached.example.org.").await, [["v1"]]);
    assert_eq!(txt(&auth, "cached.example.org.").await, [["v1"]]);
    assert_eq!(server.queries(), 1, "positive answer cached");

    for _ in 0..2 {
        let err = resolver(&auth)
            .txt_lookup("absent.example.org.")
            .await
            .unwrap_err();
        assert_eq!(no_records_code(&err), Some(ResponseCode::NXDomain));
    }
    assert_eq!(server.queries(), 2, "negative answer cached via the SOA");

    server.update(|zone| {
        zone.txt("absent.example.org", "now here");
        zone.remove("cached.example.org");
    });
    // A fresh resolver (empty cache) sees the change.
    let fresh = authenticator(&server);
    assert_eq!(txt(&fresh, "absent.example.org.").await, [["now here"]]);
    let err = resolver(&fresh)
        .txt_lookup("cached.example.org.")
        .await
        .unwrap_err();
    assert_eq!(no_records_code(&err), Some(ResponseCode::NXDomain));
}

/// Sends `request` over UDP and returns the decoded response.
fn udp_exchange(addr: SocketAddr, request: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(&request.to_vec().unwrap(), addr).unwrap();
    let mut buf = [0u8; 65535];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

/// Sends `request` over TCP (two-byte length prefix) and returns the
/// decoded response, checking the frame length.
fn tcp_exchange(stream: &mut TcpStream, request: &Message) -> Message {
    let bytes = request.to_vec().unwrap();
    let mut frame = (bytes.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&bytes);
    stream.write_all(&frame).unwrap();
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

fn request(id: u16, name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message
}

#[test]
fn wire_details_edns_truncation_and_tcp_framing() {
    let mut zone = Zone::new();
    zone.txt("medium.example.org", &"m".repeat(700)); // ~750-byte answer
    let server = DnsServer::start(zone).unwrap();

    // Without EDNS the limit is 512 bytes: truncated, no records, no OPT.
    let response = udp_exchange(
        server.addr(),
        &request(0x1234, "medium.example.org.", RecordType::TXT, None),
    );
    assert_eq!(response.metadata.id, 0x1234);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert!(response.metadata.truncation);
    assert!(response.metadata.authoritative);
    assert!(response.metadata.recursion_desired);
    assert!(response.answers.is_empty());
    assert!(response.edns.is_none());
    assert_eq!(response.queries.len(), 1);

    // With EDNS (payload 1232) it fits, and the OPT record is returned.
    let response = udp_exchange(
        server.addr(),
        &request(7, "medium.example.org.", RecordType::TXT, Some(4096)),
    );
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 1);
    assert_eq!(
        response.edns.as_ref().map(Edns::max_payload),
        Some(testkit::dns::MAX_UDP_PAYLOAD)
    );

    // TCP has no size limit; several queries share one connection.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for id in [1, 2] {
        let response = tcp_exchange(
            &mut stream,
            &request(id, "medium.example.org.", RecordType::TXT, None),
        );
        assert_eq!(response.metadata.id, id);
        assert!(!response.metadata.truncation);
        assert_eq!(response.answers.len(), 1);
    }

    // NXDOMAIN carries the SOA in the authority section.
    let response = udp_exchange(
        server.addr(),
        &request(9, "nothing.example.org.", RecordType::TXT, Some(1232)),
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(response.authorities.len(), 1);
    assert!(matches!(&response.authorities[0].data, RData::SOA(soa) if soa.minimum == 60));

    // Unsupported opcodes are refused with NOTIMP.
    let mut notify = request(10, "example.org.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    let response = udp_exchange(server.addr(), &notify);
    assert_eq!(response.metadata.response_code, ResponseCode::NotImp);

    assert_eq!(server.queries(), 6);
    assert_eq!(server.tcp_queries(), 2);
}

#[test]
fn dropping_the_server_stops_it_promptly() {
    let mut zone = Zone::new();
    zone.a("example.org", Ipv4Addr::new(192, 0, 2, 1));
    let server = DnsServer::start(zone).unwrap();
    let addr = server.addr();
    // An idle TCP connection must not keep the server alive.
    let _idle = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    drop(server);
    assert!(started.elapsed() < Duration::from_millis(500));
    // Nobody answers any more.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let query = request(1, "example.org.", RecordType::A, None);
    socket.send_to(&query.to_vec().unwrap(), addr).unwrap();
    let mut buf = [0u8; 512];
    assert!(socket.recv_from(&mut buf).is_err());
}

#[test]
fn the_testkit_dns_binary_serves_a_zone_file() {
    let dir = tempfile::tempdir().unwrap();
    let zone_path = dir.path().join("zone.txt");
    std::fs::write(
        &zone_path,
        "# demo zone\nexample.org TXT \"v=spf1 \" \"-all\"\nmx.example.org A 192.0.2.25\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_testkit-dns"))
        .arg(&zone_path)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .parse()
        .unwrap();
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    let response = udp_exchange(
        addr,
        &request(3, "example.org.", RecordType::TXT, Some(1232)),
    );
    let RData::TXT(txt) = &response.answers[0].data else {
        panic!("not TXT")
    };
    assert_eq!(txt.txt_data.len(), 2);
    let response = udp_exchange(addr, &request(4, "MX.example.org.", RecordType::A, None));
    assert!(
        matches!(&response.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 25))
    );

    child.kill().unwrap();
    child.wait().unwrap();

    // A bad zone file is reported with its line number.
    std::fs::write(&zone_path, "example.org\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_testkit-dns"))
        .arg(&zone_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1: missing record type"), "{stderr}");
}
