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
        // The address is written in the line itself, in brackets.
        let v4 = format!("[{ip}");
        let v6 = format!("IPv6:{ip}");
        let lower = value.to_ascii_lowercase();
        assert!(
            value.contains(&v4)
                || lower.contains(&v6.to_ascii_lowercase())
                || lower.contains(&format!("[{}", ip.to_string().to_ascii_lowercase())),
            "{value:?}: {ip} is not written in the line"
        );
    }
    if hop.problem.is_some() {
        assert!(hop.ip.is_none() && hop.helo.is_none(), "{value:?}: {hop:?}");
    }
    assert!(hop.raw.chars().count() <= 2000);
    assert!(!hop.raw.contains(['\r', '\n']));
});
