//! Pure: what authentication found, in the words of RFC 8601, and how it
//! aligns with the From domain.
//!
//! [`crate::authenticate`] produces [`Evidence`]; [`crate::decide`] reads
//! it through [`alignment`]; the case log keeps it as it was at receipt.
//! Plain owned data with no DNS or mail-auth type in it, so both sides
//! depend on this module and not on each other.

use std::net::IpAddr;

use serde::Serialize;

use crate::domain::{DomainName, normalize_domain};

/// A check's outcome in the words of RFC 8601.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    Neutral,
    None,
    SoftFail,
    TempError,
    PermError,
    Policy,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::SoftFail => "softfail",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
            AuthResult::Policy => "policy",
        }
    }
}

/// What the authentication of one message found.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// One entry per DKIM-Signature header examined (or refused).
    pub dkim: Vec<DkimCheck>,
    pub spf: SpfCheck,
    pub dmarc: DmarcCheck,
}

/// One DKIM signature and its result.
#[derive(Debug, Clone, Serialize)]
pub struct DkimCheck {
    /// The signing domain (`d=`), normalised when valid.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// `rsa-sha256`, `ed25519-sha256`, `rsa-sha1` (refused) or `unknown`.
    pub algorithm: &'static str,
    pub result: AuthResult,
    /// Why the result is not `pass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key record (`selector._domainkey.domain` TXT) as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_record: Option<String>,
}

/// The SPF check of the envelope sender at the trusted hop.
#[derive(Debug, Clone, Serialize)]
pub struct SpfCheck {
    pub result: AuthResult,
    /// The domain whose policy was evaluated (the envelope sender's).
    pub domain: Option<String>,
    /// The client address recorded by the trusted MX.
    pub ip: Option<IpAddr>,
    /// The HELO name recorded by the trusted MX.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// The envelope sender (`postmaster@HELO` for `<>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `Received` line that supplied the inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// The domain's SPF record as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// DMARC-style alignment of the results with the From domain.
#[derive(Debug, Clone, Serialize)]
pub struct DmarcCheck {
    /// `pass` when the From domain is authenticated by an aligned
    /// identifier, `temperror` when a transient failure prevented it,
    /// `fail` otherwise, `none` when there is no From domain to align.
    pub result: AuthResult,
    /// The published policy (`p=`) of the From domain, informational.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The `_dmarc` record as fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

impl Evidence {
    /// The DKIM and SPF results, before DMARC-style alignment is worked
    /// out (`none` until then).
    pub fn new(dkim: Vec<DkimCheck>, spf: SpfCheck) -> Evidence {
        Evidence {
            dkim,
            spf,
            dmarc: DmarcCheck {
                result: AuthResult::None,
                policy: None,
                record: None,
            },
        }
    }

    /// Evidence for a message that was not checked at all.
    pub fn unchecked(reason: &str) -> Evidence {
        Evidence::new(Vec::new(), SpfCheck::none(reason))
    }
}

impl SpfCheck {
    /// No SPF result, and why.
    pub fn none(reason: &str) -> SpfCheck {
        SpfCheck {
            result: AuthResult::None,
            domain: None,
            ip: None,
            helo: None,
            envelope_from: None,
            reason: Some(reason.to_string()),
            received: None,
            record: None,
        }
    }
}

/// How the From domain fared against the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alignment {
    /// An aligned DKIM signature verified.
    Dkim(String),
    /// SPF passed for an aligned envelope domain, with no aligned DKIM
    /// signature that failed.
    Spf(String),
    /// No aligned pass, and a transient failure stopped a check that
    /// could have given one.
    Transient(String),
    /// Not authenticated, with the reason.
    No(String),
}

impl Alignment {
    pub fn dmarc_result(&self) -> AuthResult {
        match self {
            Alignment::Dkim(_) | Alignment::Spf(_) => AuthResult::Pass,
            Alignment::Transient(_) => AuthResult::TempError,
            Alignment::No(_) => AuthResult::Fail,
        }
    }
}

fn aligned(from: &DomainName, domain: Option<&str>) -> bool {
    domain
        .and_then(normalize_domain)
        .is_some_and(|d| d.aligned_with(from))
}

/// Applies the rules of SPEC.md "Authenticated" to the evidence.
pub fn alignment(from: &DomainName, evidence: &Evidence) -> Alignment {
    let aligned_dkim: Vec<&DkimCheck> = evidence
        .dkim
        .iter()
        .filter(|c| aligned(from, Some(&c.domain)))
        .collect();
    if let Some(pass) = aligned_dkim.iter().find(|c| c.result == AuthResult::Pass) {
        return Alignment::Dkim(format!("DKIM signature of {} verified", pass.domain));
    }
    // Content that claims the agency's signature but does not carry it is
    // not outweighed by a path check.
    let broken = aligned_dkim.iter().find(|c| {
        matches!(
            c.result,
            AuthResult::Fail | AuthResult::Neutral | AuthResult::Policy | AuthResult::PermError
        )
    });
    let spf = &evidence.spf;
    let spf_aligned = aligned(from, spf.domain.as_deref());
    let ip = spf
        .ip
        .map_or_else(|| "unknown address".to_string(), |ip| ip.to_string());
    if broken.is_none() && spf_aligned && spf.result == AuthResult::Pass {
        return Alignment::Spf(format!(
            "SPF pass for {} from {ip}",
            spf.domain.as_deref().unwrap_or_default()
        ));
    }
    if let Some(t) = aligned_dkim
        .iter()
        .find(|c| c.result == AuthResult::TempError)
    {
        return Alignment::Transient(format!(
            "DKIM key {}._domainkey.{} could not be fetched ({})",
            t.selector,
            t.domain,
            t.reason.as_deref().unwrap_or("temporary error")
        ));
    }
    if broken.is_none() && spf_aligned && spf.result == AuthResult::TempError {
        return Alignment::Transient(format!(
            "SPF check of {} could not complete ({})",
            spf.domain.as_deref().unwrap_or_default(),
            spf.reason.as_deref().unwrap_or("temporary error")
        ));
    }
    let dkim_part = match broken {
        Some(c) => format!(
            "DKIM signature of {} {} ({})",
            c.domain,
            c.result.as_str(),
            c.reason.as_deref().unwrap_or("no reason given")
        ),
        None if evidence.dkim.is_empty() => "no DKIM signature".to_string(),
        None => format!("no DKIM signature aligned with {from}"),
    };
    let spf_part = match (&spf.domain, spf.result) {
        (Some(d), r) if spf_aligned && broken.is_some() && r == AuthResult::Pass => {
            format!("SPF pass for {d} not accepted over it")
        }
        (Some(d), r) if spf_aligned => format!("SPF {} for {d} from {ip}", r.as_str()),
        (Some(d), r) => format!("SPF {} for unaligned envelope domain {d}", r.as_str()),
        (None, _) => format!(
            "no SPF evidence: {}",
            spf.reason.as_deref().unwrap_or("none")
        ),
    };
    Alignment::No(format!("{dkim_part}; {spf_part}"))
}
