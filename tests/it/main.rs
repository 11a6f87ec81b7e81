//! Integration tests: the real binary against real servers on 127.0.0.1.

mod cases;
mod daemon;
mod dovecot;
mod imap;
mod metrics;
mod mta;
mod notices;
mod postfix;
mod replies;
mod robustness;
mod smtp_sink;
mod spf_suite;
mod support;
mod verify;
