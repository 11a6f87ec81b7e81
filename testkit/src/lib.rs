//! Real loopback test infrastructure for legal-intake's integration tests,
//! benchmarks and demo.
//!
//! Nothing here is a mock: [`dns`] runs a real DNS server on 127.0.0.1 that
//! resolvers talk to over UDP and TCP, [`dkim`] makes real keys and real
//! DKIM signatures that mail-auth verifies against that server, and [`mail`]
//! builds well-formed RFC 5322 messages to sign and feed to the daemon.
//! Network traffic never leaves the loopback interface.
//!
//! Examples use the documentation ranges: domains under `example.org`,
//! `example.com` and `example.net`, addresses from 192.0.2.0/24,
//! 198.51.100.0/24 and 2001:db8::/32.

#![warn(missing_docs)]

pub mod dkim;
pub mod dns;
pub mod mail;
