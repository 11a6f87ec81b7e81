//! Real loopback test infrastructure for legal-intake's integration tests,
//! benchmarks and demo.
//!
//! Nothing here is a mock: [`dns`] runs a real DNS server on 127.0.0.1 that
//! resolvers talk to over UDP and TCP, [`dkim`] makes real keys and real
//! DKIM signatures that mail-auth verifies against that server, and [`mail`]
//! builds well-formed RFC 5322 messages to sign and feed to the daemon.
//! [`dovecot`], [`smtp_sink`] and [`postfix`] run the real mail servers of
//! the integration tests (Dovecot, aiosmtpd, Postfix) as throwaway
//! instances in temporary folders, with [`tls`]'s throwaway CA; [`webdriver`] drives a real headless
//! Chromium (Debian's) over WebDriver, and [`http`] sends the requests no
//! browser would. Network traffic never leaves the loopback interface.
//!
//! Examples use the documentation ranges: domains under `example.org`,
//! `example.com` and `example.net`, addresses from 192.0.2.0/24,
//! 198.51.100.0/24 and 2001:db8::/32.

#![warn(missing_docs)]

pub mod accept;
pub mod dkim;
pub mod dns;
pub mod dovecot;
pub mod http;
pub mod mail;
pub mod postfix;
pub mod smtp_sink;
pub mod tls;
pub mod webdriver;

/// A port on 127.0.0.1 that was free a moment ago (chosen by the OS, then
/// released). Another process may take it before the caller binds it: the
/// Dovecot and Postfix harnesses then retry with a fresh one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}
