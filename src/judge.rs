//! One message judged: parse, authenticate, decide — no side effects.
//!
//! `verify`, `ingest` and the daemon all call [`Judge::judge`], which is
//! what makes `verify` "exactly as `run` would".

use serde::Serialize;

use crate::audit::sha256_hex;
use crate::authenticate::Authenticator;
use crate::config::Config;
use crate::decide::{self, History, Policy, Verdict};
use crate::evidence::Evidence;
use crate::message::{self, Inbound};

/// A message with everything said about it.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    pub inbound: Inbound,
    pub evidence: Evidence,
    pub verdict: Verdict,
}

/// Judging: parse, authenticate, decide; cheap to clone into tasks.
#[derive(Clone)]
pub struct Judge {
    pub authenticator: Authenticator,
    pub policy: Policy,
    pub max_message_bytes: usize,
}

impl Judge {
    pub fn new(config: &Config) -> anyhow::Result<Judge> {
        Ok(Judge {
            authenticator: Authenticator::new(config)?,
            policy: Policy::from_config(config),
            max_message_bytes: config.limits.max_message_bytes,
        })
    }

    /// Parses and authenticates a message (the part that needs DNS);
    /// `sha256` is the hex SHA-256 of `raw` (`audit::sha256_hex`).
    pub async fn examine(&self, raw: &[u8], sha256: String) -> (Inbound, Evidence) {
        let inbound = message::parse_hashed(raw, sha256, self.max_message_bytes);
        let evidence = self.authenticator.authenticate(raw, &inbound).await;
        (inbound, evidence)
    }

    /// The whole judgement with the given history.
    pub async fn judge(&self, raw: &[u8], history: &History) -> Judgement {
        let (inbound, evidence) = self.examine(raw, sha256_hex(raw)).await;
        let verdict = decide::decide(&inbound, &evidence, &self.policy, history);
        Judgement {
            inbound,
            evidence,
            verdict,
        }
    }
}
