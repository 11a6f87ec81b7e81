//! Pure: (Inbound, Evidence, Policy, History) → [`Verdict`].
//!
//! The decision table of SPEC.md lives here and nowhere else. No I/O, no
//! clock, no environment: everything the decision depends on is a
//! parameter, so every row of the table is a unit test.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::DomainName;
use crate::evidence::{Alignment, Evidence, alignment};
use crate::message::Inbound;

/// The one decision each message gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Acknowledge,
    Reject,
    Quarantine,
    Defer,
    /// Authenticated mail from the company's own domains
    /// (`auth.own_domains`): filed as a note, never answered.
    Internal,
}

impl Decision {
    /// Every decision, in the order the metrics list them.
    pub const ALL: [Decision; 5] = [
        Decision::Acknowledge,
        Decision::Reject,
        Decision::Quarantine,
        Decision::Defer,
        Decision::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Acknowledge => "acknowledge",
            Decision::Reject => "reject",
            Decision::Quarantine => "quarantine",
            Decision::Defer => "defer",
            Decision::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Decision {
    type Err = String;

    /// The stored word (`verdicts.decision`) back into a decision.
    fn from_str(s: &str) -> Result<Decision, String> {
        Decision::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a decision"))
    }
}

/// What the decision needs from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub agencies: Vec<(String, Vec<DomainName>)>,
    /// `auth.own_domains`.
    pub own_domains: Vec<DomainName>,
    pub defer_max_tries: u32,
    pub replies_per_sender_per_day: u32,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            agencies: c
                .agencies
                .iter()
                .map(|a| (a.name.clone(), a.domains.clone()))
                .collect(),
            own_domains: c.auth.own_domains.clone(),
            defer_max_tries: c.limits.defer_max_tries,
            replies_per_sender_per_day: c.limits.replies_per_sender_per_day,
        }
    }

    /// The allowlisted agency covering `domain`, by whole labels.
    pub fn agency_for(&self, domain: &DomainName) -> Option<&str> {
        self.agencies
            .iter()
            .find(|(_, ds)| ds.iter().any(|d| domain.is_within(d)))
            .map(|(name, _)| name.as_str())
    }

    /// Whether `domain` is one of the company's own, by whole labels.
    pub fn is_own(&self, domain: &DomainName) -> bool {
        self.own_domains.iter().any(|d| domain.is_within(d))
    }
}

/// What the case log knows that bears on this message.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    /// How many times this message was deferred before.
    pub previous_defers: u32,
    /// Replies queued to this sender address in the last 24 hours.
    pub replies_to_sender_today: u32,
    /// A reply of the same kind was queued for the same case within 7 days.
    pub replied_to_case_recently: bool,
}

/// The decision and everything said about it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// One line a person can act on.
    pub reason: String,
    /// Whether a reply (acknowledgement or rejection) is to be sent.
    pub reply: bool,
    /// Why a reply the decision calls for is not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_suppressed: Option<String>,
    /// The allowlisted agency the From domain belongs to.
    pub agency: Option<String>,
}

/// The decision table.
pub fn decide(
    inbound: &Inbound,
    evidence: &Evidence,
    policy: &Policy,
    history: &History,
) -> Verdict {
    let quarantine = |reason: String| Verdict {
        decision: Decision::Quarantine,
        reason,
        reply: false,
        reply_suppressed: None,
        agency: None,
    };
    if let Some(a) = inbound.anomalies.first() {
        return quarantine(a.to_string());
    }
    let from = match &inbound.from {
        Ok(m) => &m.domain,
        Err(problem) => return quarantine(format!("ambiguous or malformed sender: {problem}")),
    };
    // A second Subject (or Message-ID, In-Reply-To, References) above a
    // signed one: a signature may cover one of them and the case, the
    // triage and the reply would be steered by the other.
    if let Some((name, count)) = inbound.repeated.first() {
        return quarantine(format!(
            "ambiguous message: {count} {name} headers where RFC 5322 allows one"
        ));
    }
    let agency = policy.agency_for(from).map(str::to_string);
    let (decision, reason) = match alignment(from, evidence) {
        Alignment::No(why) => return quarantine(format!("not authenticated as {from}: {why}")),
        Alignment::Transient(why) => {
            let tries = history.previous_defers + 1;
            if tries >= policy.defer_max_tries {
                return quarantine(format!(
                    "still unverifiable after {tries} tries (limits.defer_max_tries): {why}"
                ));
            }
            return Verdict {
                decision: Decision::Defer,
                reason: format!("{why}; try {tries} of {}", policy.defer_max_tries),
                reply: false,
                reply_suppressed: None,
                agency,
            };
        }
        Alignment::Dkim(how) | Alignment::Spf(how) if policy.is_own(from) => {
            return Verdict {
                decision: Decision::Internal,
                reason: format!(
                    "{how}; {from} is the company's own (auth.own_domains): an internal note, never answered"
                ),
                reply: false,
                reply_suppressed: None,
                agency: None,
            };
        }
        Alignment::Dkim(how) | Alignment::Spf(how) => match &agency {
            Some(name) => (Decision::Acknowledge, format!("{how}; {from} is {name}")),
            None => (
                Decision::Reject,
                format!("{how}; {from} is not a Gibraltar agency on the allowlist"),
            ),
        },
    };
    let suppressed = if let Some(why) = &inbound.automatic {
        Some(format!("automatic message ({why})"))
    } else if history.replied_to_case_recently {
        Some("already answered for this case within 7 days".to_string())
    } else if history.replies_to_sender_today >= policy.replies_per_sender_per_day {
        Some(format!(
            "{} replies to this sender in the last day (limits.replies_per_sender_per_day)",
            history.replies_to_sender_today
        ))
    } else {
        None
    };
    Verdict {
        decision,
        reason,
        reply: suppressed.is_none(),
        reply_suppressed: suppressed,
        agency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::normalize_domain;
    use crate::evidence::{AuthResult, DkimCheck, SpfCheck};

    fn policy() -> Policy {
        Policy {
            agencies: vec![(
                "Royal Gibraltar Police".into(),
                vec![normalize_domain("police.gi").unwrap()],
            )],
            own_domains: vec![normalize_domain("ivpn.net").unwrap()],
            defer_max_tries: 5,
            replies_per_sender_per_day: 10,
        }
    }

    fn dkim(domain: &str, result: AuthResult) -> DkimCheck {
        DkimCheck {
            domain: domain.into(),
            selector: "s1".into(),
            algorithm: "rsa-sha256",
            result,
            reason: None,
            key_record: None,
        }
    }

    fn spf(domain: &str, result: AuthResult) -> SpfCheck {
        SpfCheck {
            result,
            domain: Some(domain.into()),
            ip: Some("192.0.2.10".parse().unwrap()),
            helo: None,
            envelope_from: None,
            reason: None,
            received: None,
            record: None,
        }
    }

    fn evidence(dkim: Vec<DkimCheck>, spf: SpfCheck) -> Evidence {
        Evidence::new(dkim, spf)
    }

    fn inbound(from: &str) -> Inbound {
        crate::message::parse(
            format!("From: {from}\r\nSubject: x\r\n\r\nbody\r\n").as_bytes(),
            1 << 20,
        )
    }

    fn check(from: &str, ev: Evidence, history: History, expected: Decision, reply: bool) {
        let v = decide(&inbound(from), &ev, &policy(), &history);
        assert_eq!(
            (v.decision, v.reply),
            (expected, reply),
            "{from}: {}",
            v.reason
        );
        assert!(!v.reason.is_empty());
    }

    #[test]
    fn decision_table() {
        use AuthResult::*;
        use Decision::*;
        let h = History::default();
        let none = || spf("police.gi", None);
        // Aligned DKIM pass is enough, whatever SPF says.
        check(
            "o@cid.police.gi",
            evidence(vec![dkim("police.gi", Pass)], spf("police.gi", Fail)),
            h,
            Acknowledge,
            true,
        );
        // SPF pass for an aligned envelope domain, no DKIM at all.
        check(
            "o@police.gi",
            evidence(vec![], spf("police.gi", Pass)),
            h,
            Acknowledge,
            true,
        );
        // An aligned DKIM signature that fails is not outweighed by SPF.
        for r in [Fail, Neutral, Policy, PermError] {
            check(
                "o@police.gi",
                evidence(vec![dkim("police.gi", r)], spf("police.gi", Pass)),
                h,
                Quarantine,
                false,
            );
        }
        // Unaligned signatures neither help nor hurt.
        check(
            "o@police.gi",
            evidence(vec![dkim("mailer.example", Fail)], spf("police.gi", Pass)),
            h,
            Acknowledge,
            true,
        );
        check(
            "o@police.gi",
            evidence(vec![dkim("mailer.example", Pass)], none()),
            h,
            Quarantine,
            false,
        );
        // SPF pass for an unaligned envelope domain proves nothing.
        check(
            "o@police.gi",
            evidence(vec![], spf("bulk.example", Pass)),
            h,
            Quarantine,
            false,
        );
        for r in [SoftFail, Fail, Neutral, None, PermError] {
            check(
                "o@police.gi",
                evidence(vec![], spf("police.gi", r)),
                h,
                Quarantine,
                false,
            );
        }
        // Authenticated but not ours.
        check(
            "o@evilpolice.gi",
            evidence(vec![dkim("evilpolice.gi", Pass)], none()),
            h,
            Reject,
            true,
        );
        check(
            "o@police.gi.example.com",
            evidence(vec![dkim("example.com", Pass)], none()),
            h,
            Reject,
            true,
        );
        check(
            "o@bka.de",
            evidence(vec![], spf("bka.de", Pass)),
            h,
            Reject,
            true,
        );
        // Transient failures of checks that could have passed: defer.
        check(
            "o@police.gi",
            evidence(vec![dkim("police.gi", TempError)], spf("police.gi", Fail)),
            h,
            Defer,
            false,
        );
        check(
            "o@police.gi",
            evidence(vec![], spf("police.gi", TempError)),
            h,
            Defer,
            false,
        );
        // A transient SPF failure cannot outweigh a broken aligned signature.
        check(
            "o@police.gi",
            evidence(vec![dkim("police.gi", Fail)], spf("police.gi", TempError)),
            h,
            Quarantine,
            false,
        );
        // An unaligned temperror could not have given a pass.
        check(
            "o@police.gi",
            evidence(vec![dkim("other.example", TempError)], none()),
            h,
            Quarantine,
            false,
        );
        // Too many deferrals become a quarantine.
        let tired = History {
            previous_defers: 4,
            ..h
        };
        check(
            "o@police.gi",
            evidence(vec![dkim("police.gi", TempError)], none()),
            tired,
            Quarantine,
            false,
        );
    }

    #[test]
    fn ambiguous_senders_are_quarantined() {
        let ev = evidence(
            vec![dkim("police.gi", AuthResult::Pass)],
            spf("police.gi", AuthResult::Pass),
        );
        for raw in [
            "Subject: x\r\n\r\nb",
            "From: a@police.gi\r\nFrom: b@police.gi\r\n\r\nb",
            "From: a@police.gi, b@police.gi\r\n\r\nb",
        ] {
            let v = decide(
                &crate::message::parse(raw.as_bytes(), 1 << 20),
                &ev,
                &policy(),
                &History::default(),
            );
            assert_eq!(v.decision, Decision::Quarantine, "{raw:?}");
            assert!(v.reason.contains("sender"), "{}", v.reason);
        }
    }

    #[test]
    fn reply_suppression() {
        let ev = || {
            evidence(
                vec![dkim("police.gi", AuthResult::Pass)],
                spf("police.gi", AuthResult::None),
            )
        };
        let p = policy();
        let auto = crate::message::parse(
            b"Auto-Submitted: auto-replied\r\nFrom: o@police.gi\r\n\r\nb",
            1 << 20,
        );
        let v = decide(&auto, &ev(), &p, &History::default());
        assert_eq!((v.decision, v.reply), (Decision::Acknowledge, false));
        assert!(v.reply_suppressed.unwrap().contains("Auto-Submitted"));
        let capped = History {
            replies_to_sender_today: 10,
            ..History::default()
        };
        let v = decide(&inbound("o@police.gi"), &ev(), &p, &capped);
        assert!(
            !v.reply
                && v.reply_suppressed
                    .unwrap()
                    .contains("replies_per_sender_per_day")
        );
        let recent = History {
            replied_to_case_recently: true,
            ..History::default()
        };
        let v = decide(&inbound("o@police.gi"), &ev(), &p, &recent);
        assert!(!v.reply && v.reply_suppressed.unwrap().contains("7 days"));
        let under = History {
            replies_to_sender_today: 9,
            ..History::default()
        };
        assert!(decide(&inbound("o@police.gi"), &ev(), &p, &under).reply);
    }
}
