//! legal-intake: files, authenticates and answers legal-process e-mail.
//!
//! A message travels one way:
//!
//! ```text
//! IMAP ─▶ message::parse ─▶ authenticate ─▶ decide ─▶ store ─▶ reply queue ─▶ SMTP
//!           pure              edge (DNS)      pure      edge
//! ```
//!
//! - [`config`]: the TOML file, validated once into a `Config`.
//! - [`domain`]: domain names as the policy compares them.
//! - [`message`]: raw bytes → `Inbound`, the facts the decision needs.
//! - [`authenticate`]: DKIM and SPF through mail-auth → `Evidence`.
//! - [`decide`]: the decision table of SPEC.md, a pure function.
//! - [`judge`]: the three above in order, shared by every command.
//! - [`verify`]: the `verify` command's output.

pub mod authenticate;
pub mod config;
pub mod decide;
pub mod domain;
pub mod judge;
pub mod message;
pub mod verify;
