//! Integration tests: the real binary against real servers on 127.0.0.1.

mod board;
mod cases;
mod daemon;
mod imap;
mod metrics;
mod mta;
mod notices;
mod replies;
mod robustness;
mod spf_suite;
mod support;
mod verify;
