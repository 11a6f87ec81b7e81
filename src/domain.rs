//! Domain names as the policy compares them: lowercase IDNA A-labels without
//! a trailing dot, matched by whole labels, aligned by organizational domain.
//!
//! Every comparison the decision makes between domains goes through this
//! module, so there is one place where `police.gi` is kept from matching
//! `evilpolice.gi` or `police.gi.example.com`.

use std::fmt;

use serde::Serialize;

/// A syntactically valid, normalised domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DomainName(String);

impl DomainName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` is `parent` or a subdomain of it, by whole labels.
    pub fn is_within(&self, parent: &DomainName) -> bool {
        self.0 == parent.0
            || (self.0.len() > parent.0.len()
                && self.0.ends_with(parent.0.as_str())
                && self.0.as_bytes()[self.0.len() - parent.0.len() - 1] == b'.')
    }

    /// The organizational domain (RFC 7489 §3.2): the registrable domain
    /// under the Public Suffix List, or the name itself when it has none.
    pub fn organizational(&self) -> &str {
        psl::domain_str(&self.0).unwrap_or(&self.0)
    }

    /// Relaxed alignment: both names share an organizational domain.
    pub fn aligned_with(&self, other: &DomainName) -> bool {
        self.organizational() == other.organizational()
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a domain: trims one trailing dot, applies UTS #46 (which
/// lowercases and converts U-labels to `xn--` A-labels) and checks the
/// result is a host name of letters, digits and hyphens. `None` for
/// anything else (empty labels, address literals, underscores, spaces).
pub fn normalize_domain(input: &str) -> Option<DomainName> {
    let input = input.strip_suffix('.').unwrap_or(input);
    if input.is_empty() || input.len() > 253 {
        return None;
    }
    let ascii = idna::domain_to_ascii_strict(input).ok()?;
    let valid = ascii.len() <= 253
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A name made only of digits and dots is an address, not a domain.
        && !ascii.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    valid.then_some(DomainName(ascii))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        normalize_domain(s).unwrap_or_else(|| panic!("{s} should be valid"))
    }

    #[test]
    fn normalisation() {
        for (input, expected) in [
            ("Police.GI", Some("police.gi")),
            ("police.gi.", Some("police.gi")),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("", None),
            ("a..b", None),
            ("under_score.example", None),
            ("sp ace.example", None),
            ("192.0.2.1", None),
            ("-bad.example", None),
        ] {
            assert_eq!(
                normalize_domain(input).map(|n| n.0),
                expected.map(String::from),
                "{input}"
            );
        }
    }

    #[test]
    fn whole_label_matching() {
        assert!(d("cid.police.gi").is_within(&d("police.gi")));
        assert!(d("police.gi").is_within(&d("police.gi")));
        assert!(!d("evilpolice.gi").is_within(&d("police.gi")));
        assert!(!d("police.gi.example.com").is_within(&d("police.gi")));
        assert!(!d("gi").is_within(&d("police.gi")));
    }

    #[test]
    fn organizational_alignment() {
        assert!(d("cid.police.gi").aligned_with(&d("police.gi")));
        assert!(d("mail.gibraltar.gov.gi").aligned_with(&d("gibraltar.gov.gi")));
        assert!(!d("police.gi").aligned_with(&d("evil.gi")));
        assert!(!d("police.gi.example.com").aligned_with(&d("police.gi")));
        assert!(d("police.gi.example.com").aligned_with(&d("example.com")));
        // Two registrants under a public suffix are not aligned.
        assert!(!d("a.co.uk").aligned_with(&d("b.co.uk")));
    }
}
