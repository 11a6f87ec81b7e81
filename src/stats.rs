//! Pure: the transparency figures of one year (`cases stats`, the board's
//! figures page) — how many legal requests arrived, of which kind, from
//! which agency, how they were decided and how they ended, with mail that
//! could not be authenticated counted apart.
//!
//! A case is counted in the year of its reference (`LR-2026-…`) by the
//! decision on the message that opened it: `acknowledge` and `reject` are
//! requests; `quarantine` is counted apart (nobody showed it came from an
//! agency, so it is not a request from one); `internal` (our own domains)
//! is not a request at all. Outcomes are counted for acknowledged requests,
//! `pending` while none is recorded.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::case::{Case, Outcome};

/// The agency column for authenticated senders outside Gibraltar.
pub const OUTSIDE: &str = "outside Gibraltar (rejected)";

/// The figures of one year.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub year: i32,
    /// When they were counted (stored form, UTC).
    pub made_at: String,
    /// The audit chain head they were counted at, so that they can be
    /// tied to the log (`audit verify --head`); `None` for an empty log.
    pub audit_head: Option<String>,
    /// Every case opened in the year.
    pub cases: usize,
    /// Authenticated requests: acknowledged plus rejected.
    pub requests: usize,
    pub by_decision: BTreeMap<String, usize>,
    pub by_kind: BTreeMap<String, usize>,
    pub by_agency: BTreeMap<String, usize>,
    /// Acknowledged requests by outcome (`pending`: none recorded yet).
    pub by_outcome: BTreeMap<String, usize>,
    /// Opened in quarantine: not authenticated, counted apart.
    pub quarantined: usize,
    /// Mail from our own domains that opened a case.
    pub internal: usize,
}

/// Counts `cases` (each with the decision on its opening message) of
/// `year`.
pub fn figures(
    year: i32,
    cases: &[(Case, Option<String>)],
    made_at: String,
    audit_head: Option<String>,
) -> Figures {
    let mut f = Figures {
        year,
        made_at,
        audit_head,
        cases: 0,
        requests: 0,
        by_decision: BTreeMap::new(),
        by_kind: BTreeMap::new(),
        by_agency: BTreeMap::new(),
        by_outcome: Outcome::ALL
            .iter()
            .map(|o| (o.as_str().to_string(), 0))
            .chain([("pending".to_string(), 0)])
            .collect(),
        quarantined: 0,
        internal: 0,
    };
    for d in ["acknowledge", "reject"] {
        f.by_decision.insert(d.to_string(), 0);
    }
    let bump = |m: &mut BTreeMap<String, usize>, k: &str| *m.entry(k.to_string()).or_default() += 1;
    for (c, decision) in cases.iter().filter(|(c, _)| c.reference.year == year) {
        f.cases += 1;
        match decision.as_deref() {
            Some(d @ ("acknowledge" | "reject")) => {
                f.requests += 1;
                bump(&mut f.by_decision, d);
                bump(&mut f.by_kind, c.kind.as_str());
                bump(&mut f.by_agency, c.agency.as_deref().unwrap_or(OUTSIDE));
                if d == "acknowledge" {
                    bump(
                        &mut f.by_outcome,
                        c.outcome.map_or("pending", |o| o.as_str()),
                    );
                }
            }
            Some("internal") => f.internal += 1,
            // Quarantined, or (never written) no verdict at all.
            _ => f.quarantined += 1,
        }
    }
    f
}

impl Figures {
    /// `section,key,count` rows with a header, the year and the head
    /// first; values with a comma or a quote are quoted (RFC 4180).
    pub fn csv(&self) -> String {
        let q = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::from("section,key,count\n");
        out.push_str(&format!("year,{},\n", self.year));
        out.push_str(&format!("made_at,{},\n", self.made_at));
        out.push_str(&format!(
            "audit_head,{},\n",
            self.audit_head.as_deref().unwrap_or("")
        ));
        out.push_str(&format!("total,cases,{}\n", self.cases));
        out.push_str(&format!("total,requests,{}\n", self.requests));
        for (section, map) in [
            ("decision", &self.by_decision),
            ("kind", &self.by_kind),
            ("agency", &self.by_agency),
            ("outcome", &self.by_outcome),
        ] {
            for (k, n) in map {
                out.push_str(&format!("{section},{},{n}\n", q(k)));
            }
        }
        out.push_str(&format!("apart,quarantined,{}\n", self.quarantined));
        out.push_str(&format!("apart,internal,{}\n", self.internal));
        out
    }

    /// The figures as a person reads them.
    pub fn text(&self) -> String {
        let list = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Transparency figures for {} (counted {}, audit head {})\n\
             requests: {} ({})\n  by kind: {}\n  by agency: {}\n  acknowledged, by outcome: {}\n\
             counted apart: {} quarantined (not authenticated), {} internal\n",
            self.year,
            self.made_at,
            self.audit_head.as_deref().unwrap_or("none"),
            self.requests,
            list(&self.by_decision),
            if self.by_kind.is_empty() {
                "none".into()
            } else {
                list(&self.by_kind)
            },
            if self.by_agency.is_empty() {
                "none".into()
            } else {
                list(&self.by_agency)
            },
            list(&self.by_outcome),
            self.quarantined,
            self.internal,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Reference, Status, UserNotice};
    use crate::triage::RequestKind;

    fn case(
        year: i32,
        number: u32,
        agency: Option<&str>,
        kind: RequestKind,
        outcome: Option<Outcome>,
    ) -> Case {
        Case {
            id: number.into(),
            reference: Reference { year, number },
            status: Status::UnderReview,
            agency: agency.map(str::to_string),
            requester: Some("x@police.gi".into()),
            authenticated: true,
            kind,
            emergency: false,
            hard_copy_served: None,
            user_notice: UserNotice::Unknown,
            user_notice_until: None,
            user_notified: None,
            deadline: None,
            outcome,
            opened_at: format!("{year}-03-01T10:00:00Z"),
            updated_at: format!("{year}-03-01T10:00:00Z"),
        }
    }

    #[test]
    fn requests_are_counted_by_their_opening_decision_and_quarantine_apart() {
        let rgp = Some("Royal Gibraltar Police");
        let d = |s: &str| Some(s.to_string());
        let cases = vec![
            (
                case(
                    2026,
                    1,
                    rgp,
                    RequestKind::CourtOrder,
                    Some(Outcome::NoneHeld),
                ),
                d("acknowledge"),
            ),
            (
                case(2026, 2, rgp, RequestKind::Subpoena, None),
                d("acknowledge"),
            ),
            (
                case(2026, 3, None, RequestKind::CourtOrder, None),
                d("reject"),
            ),
            (
                case(2026, 4, None, RequestKind::Emergency, None),
                d("quarantine"),
            ),
            (case(2026, 5, None, RequestKind::Other, None), d("internal")),
            (
                case(2025, 9, rgp, RequestKind::CourtOrder, None),
                d("acknowledge"),
            ),
        ];
        let f = figures(
            2026,
            &cases,
            "2026-12-07T12:00:00Z".into(),
            Some("ab".into()),
        );
        assert_eq!(
            (f.cases, f.requests, f.quarantined, f.internal),
            (5, 3, 1, 1)
        );
        assert_eq!(f.by_decision["acknowledge"], 2);
        assert_eq!(f.by_decision["reject"], 1);
        assert_eq!(f.by_kind["court_order"], 2);
        assert!(
            !f.by_kind.contains_key("emergency"),
            "quarantine is not a request"
        );
        assert_eq!(f.by_agency["Royal Gibraltar Police"], 2);
        assert_eq!(f.by_agency[OUTSIDE], 1);
        assert_eq!(
            (
                f.by_outcome["none_held"],
                f.by_outcome["pending"],
                f.by_outcome["data_produced"]
            ),
            (1, 1, 0)
        );
        let csv = f.csv();
        assert!(csv.starts_with("section,key,count\nyear,2026,\n"), "{csv}");
        assert!(csv.contains("\naudit_head,ab,\n"), "{csv}");
        assert!(csv.contains("\nagency,Royal Gibraltar Police,2\n"), "{csv}");
        assert!(
            csv.contains("\nagency,outside Gibraltar (rejected),1\n"),
            "{csv}"
        );
        assert!(csv.contains("\napart,quarantined,1\n"), "{csv}");
        assert!(
            f.text().contains("requests: 3 (acknowledge 2, reject 1)"),
            "{}",
            f.text()
        );
    }

    #[test]
    fn a_name_with_a_comma_is_quoted() {
        let cases = vec![(
            case(2026, 1, Some("Police, \"HQ\""), RequestKind::Other, None),
            Some("acknowledge".to_string()),
        )];
        let csv = figures(2026, &cases, "t".into(), None).csv();
        assert!(csv.contains("\nagency,\"Police, \"\"HQ\"\"\",1\n"), "{csv}");
    }
}
