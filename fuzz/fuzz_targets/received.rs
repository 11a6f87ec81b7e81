//! The trusted-hop reader: any `Received` value is read without a panic,
//! and whatever it yields as evidence obeys the rules it promises.
#![no_main]

use legal_intake::received;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let hop = received::parse(&value);
    if let Some(ip) = hop.ip {
        // An address is only ever given with a HELO, from a readable line.
        assert!(hop.problem.is_none(), "{value:?}: {hop:?}");
        let helo = hop.helo.as_deref().expect("a HELO with the address");
        assert!(!helo.is_empty() && !helo.contains(char::is_whitespace));
        // The address is written in the line itself, as a bracketed
        // literal (in any spelling that parses to it: `[0001:db8::10]`).
        let written = value.split('[').skip(1).filter_map(|rest| {
            let inner = rest.split(']').next()?;
            // The tag is case-insensitive (RFC 5321 ABNF): `iPv6:` too.
            let inner = match inner.get(..5) {
                Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &inner[5..],
                _ => inner,
            };
            inner.parse::<std::net::IpAddr>().ok()
        });
        assert!(
            written.into_iter().any(|w| w == ip),
            "{value:?}: {ip} is not written in the line"
        );
    }
    if hop.problem.is_some() {
        assert!(hop.ip.is_none() && hop.helo.is_none(), "{value:?}: {hop:?}");
    }
    assert!(hop.raw.chars().count() <= 2000);
    assert!(!hop.raw.contains(['\r', '\n']));
});
