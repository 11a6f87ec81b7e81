//! The Message-IDs of everything legal-intake sends: replies, notices to
//! the legal team and digests.
//!
//! A Message-ID is `<what.tag@domain>`: the domain is ours (so a reply's
//! threading never borrows the sender's), the tag unique because the parts
//! it hashes name what the message is for, and fresh because it mixes in
//! the instant, the process and a counter.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::Config;

/// The domain of the Message-IDs of everything we send: that of
/// `smtp.from`, else the DKIM signing domain.
pub fn domain(config: &Config) -> String {
    config
        .smtp
        .as_ref()
        .and_then(|s| crate::message::parse_address_header(&s.from))
        .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_string()))
        .or_else(|| config.dkim_signing.as_ref().map(|d| d.domain.clone()))
        .unwrap_or_else(|| "legal-intake.invalid".to_string())
}

/// A fresh tag for a Message-ID: unique because `parts` name what it is
/// for (a request's bytes are filed once, a digest's day and address are
/// queued once), fresh because it mixes in `now` (from the clock passed
/// down), the process and a counter.
pub fn fresh_tag(now: OffsetDateTime, parts: &[&[u8]]) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.update(now.unix_timestamp_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(h.finalize())[..24].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_for_the_same_parts_and_instant() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let a = fresh_tag(now, &[b"x"]);
        let b = fresh_tag(now, &[b"x"]);
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
    }
}
