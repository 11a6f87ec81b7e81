//! The case model: references, statuses and the moves a person may make
//! between them, the user-notice field, and the case as stored.
//!
//! Pure data and rules; the SQL that reads and writes cases is in
//! `store`, the commands that print and change them in `cases`.
//!
//! # Status transitions
//!
//! The daemon opens a case as `received` (acknowledged request),
//! `out_of_jurisdiction` (authenticated, not an allowlisted agency) or
//! `quarantined` (not authenticated, not judgeable). From there a person
//! moves it along SPEC.md's path, and nothing else:
//!
//! | from | to |
//! |---|---|
//! | `received` | `under_review` |
//! | `under_review` | `responded`, `challenged`, `rejected` |
//! | `challenged` | `responded` (the challenge failed and the order was complied with), `closed` |
//! | `responded`, `rejected` | `closed` |
//! | `quarantined`, `out_of_jurisdiction` | `under_review`, `closed` |
//! | `closed` | `under_review` (reopening; needs a note saying why) |
//!
//! Nobody moves a case into `received`, `quarantined` or
//! `out_of_jurisdiction`: those record what the daemon found, and a case
//! never skips review on its way to an outcome.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::triage::RequestKind;

/// `LR-YYYY-NNNN`: the year the case was opened and its number in that
/// year, gap-free from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub year: i32,
    pub number: u32,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LR-{:04}-{:04}", self.year, self.number)
    }
}

impl FromStr for Reference {
    type Err = String;

    fn from_str(s: &str) -> Result<Reference, String> {
        let bad = || format!("`{s}` is not a case reference such as LR-2026-0001");
        let rest = s
            .trim()
            .strip_prefix("LR-")
            .or_else(|| s.trim().strip_prefix("lr-"))
            .ok_or_else(bad)?;
        let (year, number) = rest.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if year.len() != 4
            || !digits(year)
            || number.len() < 4
            || number.len() > 9
            || !digits(number)
        {
            return Err(bad());
        }
        let number: u32 = number.parse().map_err(|_| bad())?;
        if number == 0 {
            return Err(bad());
        }
        Ok(Reference {
            year: year.parse().map_err(|_| bad())?,
            number,
        })
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The case references a subject names: first those written as our
/// replies write them, `[LR-YYYY-NNNN]`, then any other mention as a whole
/// word (`Re: LR-2026-0042`, `(lr-2026-0042)`), each once, in order.
pub fn references_in(subject: &str) -> Vec<Reference> {
    static BARE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)\bLR-[0-9]{4}-[0-9]{4,9}\b").expect("static pattern")
    });
    let bracketed = subject
        .split('[')
        .skip(1)
        .filter_map(|chunk| chunk.split_once(']'))
        .filter_map(|(inside, _)| inside.trim().to_ascii_uppercase().parse().ok());
    let bare = BARE
        .find_iter(subject)
        .filter_map(|m| m.as_str().to_ascii_uppercase().parse().ok());
    let mut found: Vec<Reference> = Vec::new();
    for r in bracketed.chain(bare) {
        if !found.contains(&r) {
            found.push(r);
        }
    }
    found
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Received,
    UnderReview,
    Responded,
    Challenged,
    Rejected,
    Closed,
    Quarantined,
    OutOfJurisdiction,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Received,
        Status::UnderReview,
        Status::Responded,
        Status::Challenged,
        Status::Rejected,
        Status::Closed,
        Status::Quarantined,
        Status::OutOfJurisdiction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::UnderReview => "under_review",
            Status::Responded => "responded",
            Status::Challenged => "challenged",
            Status::Rejected => "rejected",
            Status::Closed => "closed",
            Status::Quarantined => "quarantined",
            Status::OutOfJurisdiction => "out_of_jurisdiction",
        }
    }

    /// The statuses a person may move a case to from this one (see the
    /// module documentation).
    pub fn next(self) -> &'static [Status] {
        use Status::*;
        match self {
            Received => &[UnderReview],
            UnderReview => &[Responded, Challenged, Rejected],
            Challenged => &[Responded, Closed],
            Responded | Rejected => &[Closed],
            Quarantined | OutOfJurisdiction => &[UnderReview, Closed],
            Closed => &[UnderReview],
        }
    }

    /// Checks a move a person asked for; the error says what is allowed.
    pub fn check_move(self, to: Status, note: Option<&str>) -> Result<(), String> {
        if self == to {
            return Err(format!("the case is already {}", self.as_str()));
        }
        if !self.next().contains(&to) {
            let allowed: Vec<&str> = self.next().iter().map(|s| s.as_str()).collect();
            return Err(format!(
                "a case cannot move from {} to {}; from {} it may move to {}",
                self.as_str(),
                to.as_str(),
                self.as_str(),
                allowed.join(" or ")
            ));
        }
        if self == Status::Closed && note.is_none_or(|n| n.trim().is_empty()) {
            return Err("reopening a closed case needs --note saying why".to_string());
        }
        Ok(())
    }

    /// The status a new case opens with, after the daemon's decision.
    pub fn opening(decision: crate::decide::Decision) -> Status {
        use crate::decide::Decision;
        match decision {
            Decision::Acknowledge => Status::Received,
            Decision::Reject => Status::OutOfJurisdiction,
            // An internal note that belongs to no case waits for a person
            // to look at it with the rest of the quarantine.
            Decision::Quarantine | Decision::Defer | Decision::Internal => Status::Quarantined,
        }
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        let norm = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == norm)
            .ok_or_else(|| {
                let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("`{s}` is not a status; one of: {}", all.join(", "))
            })
    }
}

/// Whether the user may be told about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserNotice {
    /// Nobody has looked yet.
    Unknown,
    Permitted,
    Prohibited,
    /// The request mentions a non-disclosure order: prohibited, to be
    /// confirmed by a person.
    ProhibitedUnconfirmed,
}

impl UserNotice {
    pub const ALL: [UserNotice; 4] = [
        UserNotice::Unknown,
        UserNotice::Permitted,
        UserNotice::Prohibited,
        UserNotice::ProhibitedUnconfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserNotice::Unknown => "unknown",
            UserNotice::Permitted => "permitted",
            UserNotice::Prohibited => "prohibited",
            UserNotice::ProhibitedUnconfirmed => "prohibited_unconfirmed",
        }
    }

    /// The words shown to a person.
    pub fn describe(self) -> &'static str {
        match self {
            UserNotice::Unknown => "not yet determined",
            UserNotice::Permitted => "permitted",
            UserNotice::Prohibited => "prohibited",
            UserNotice::ProhibitedUnconfirmed => "prohibited, to be confirmed",
        }
    }
}

impl FromStr for UserNotice {
    type Err = String;

    fn from_str(s: &str) -> Result<UserNotice, String> {
        let norm = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        UserNotice::ALL
            .into_iter()
            .find(|n| n.as_str() == norm)
            .ok_or_else(|| format!("`{s}` is not one of permitted, prohibited, unknown"))
    }
}

/// The reply a decision calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Acknowledgement,
    Rejection,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Acknowledgement => "acknowledgement",
            ReplyKind::Rejection => "rejection",
        }
    }

    pub fn for_decision(d: crate::decide::Decision) -> Option<ReplyKind> {
        use crate::decide::Decision;
        match d {
            Decision::Acknowledge => Some(ReplyKind::Acknowledgement),
            Decision::Reject => Some(ReplyKind::Rejection),
            Decision::Quarantine | Decision::Defer | Decision::Internal => None,
        }
    }
}

/// A case as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// The row id; internal, never shown to people.
    #[serde(skip)]
    pub id: i64,
    pub reference: Reference,
    pub status: Status,
    /// The allowlisted agency of the requester, when there is one.
    pub agency: Option<String>,
    /// The From address of the message that opened the case.
    pub requester: Option<String>,
    /// Whether that address was authenticated (DKIM or SPF, aligned).
    pub authenticated: bool,
    pub kind: RequestKind,
    pub emergency: bool,
    /// When the duplicate hard copy was served in person (date or
    /// instant), `None` while it has not been.
    pub hard_copy_served: Option<String>,
    pub user_notice: UserNotice,
    /// Until when notice is prohibited, when the process says.
    pub user_notice_until: Option<String>,
    /// When the user was told of the request (date or instant), once they
    /// have been.
    pub user_notified: Option<String>,
    /// The response deadline, when one is set.
    pub deadline: Option<String>,
    /// How the request ended, for the transparency figures; `None` while
    /// it has not.
    pub outcome: Option<Outcome>,
    pub opened_at: String,
    pub updated_at: String,
}

/// A field of a case that can be changed after it is opened; each change
/// is an audit event naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Kind,
    Emergency,
    HardCopyServed,
    UserNotice,
    UserNoticeUntil,
    UserNotified,
    Deadline,
    Outcome,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::Emergency => "emergency",
            Field::HardCopyServed => "hard_copy_served",
            Field::UserNotice => "user_notice",
            Field::UserNoticeUntil => "user_notice_until",
            Field::UserNotified => "user_notified",
            Field::Deadline => "deadline",
            Field::Outcome => "outcome",
        }
    }
}

/// How a request ended, as the transparency figures count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Data was disclosed.
    DataProduced,
    /// Nothing was disclosed because nothing was held (no logs).
    NoneHeld,
    /// The request was challenged, and nothing disclosed.
    Challenged,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [
        Outcome::DataProduced,
        Outcome::NoneHeld,
        Outcome::Challenged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::DataProduced => "data_produced",
            Outcome::NoneHeld => "none_held",
            Outcome::Challenged => "challenged",
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Outcome, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s.trim().replace('-', "_"))
            .ok_or_else(|| {
                format!("`{s}` is not an outcome; one of: data_produced, none_held, challenged")
            })
    }
}

/// An outcome setting on the command line: an outcome, or `none` to clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeSetting(pub Option<Outcome>);

/// Parses an [`OutcomeSetting`] (for clap and the board).
pub fn parse_outcome_setting(s: &str) -> Result<OutcomeSetting, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(OutcomeSetting(None));
    }
    s.parse().map(|o| OutcomeSetting(Some(o)))
}

impl Case {
    /// The fields the audit chain vouches for, as the events record them:
    /// `case_opened` carries all of them, later events change one each.
    pub fn audited(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("reference".into(), self.reference.to_string().into());
        m.insert("status".into(), self.status.as_str().into());
        m.insert("agency".into(), self.agency.clone().into());
        m.insert("requester".into(), self.requester.clone().into());
        m.insert("authenticated".into(), self.authenticated.into());
        for f in [
            Field::Kind,
            Field::Emergency,
            Field::HardCopyServed,
            Field::UserNotice,
            Field::UserNoticeUntil,
            Field::UserNotified,
            Field::Deadline,
            Field::Outcome,
        ] {
            m.insert(f.as_str().into(), self.value(f));
        }
        m
    }

    /// What the legal team should be reminded of on the local day
    /// `today`: the duplicate hard copy still not served `hard_copy_days`
    /// days after an agency's request was opened (`reminders.hard_copy_days`);
    /// a prohibition on telling the user whose end date has come, and
    /// notice that is permitted, while the date the user was told is not
    /// recorded.
    pub fn reminders(&self, today: time::Date, hard_copy_days: u32) -> Vec<String> {
        let today = crate::clock::day(today);
        let mut out = Vec::new();
        let awaiting_hard_copy = matches!(
            self.status,
            Status::Received | Status::UnderReview | Status::Challenged
        );
        if awaiting_hard_copy && self.authenticated && self.hard_copy_served.is_none() {
            let opened = self.opened_at.get(..10).unwrap_or(&self.opened_at);
            let due = time::Date::parse(opened, crate::clock::DAY)
                .ok()
                .map(|d| crate::clock::day(d + time::Duration::days(hard_copy_days.into())));
            if due.is_some_and(|due| due <= today) {
                out.push(format!(
                    "hard copy not served {hard_copy_days} days after the request (opened {opened})"
                ));
            }
        }
        // Telling the user: once it is allowed, until it is recorded done.
        if self.status != Status::Closed && self.authenticated && self.user_notified.is_none() {
            match (&self.user_notice, &self.user_notice_until) {
                (UserNotice::Prohibited, Some(until))
                    if until.get(..10).unwrap_or(until) <= today.as_str() =>
                {
                    out.push(format!(
                        "the prohibition on telling the user ended on {}: the user may now be told",
                        until.get(..10).unwrap_or(until)
                    ));
                }
                (UserNotice::Permitted, _) => out.push(
                    "the user may be told and has not been (record it with the date they were told)"
                        .to_string(),
                ),
                _ => {}
            }
        }
        out
    }

    /// The current value of a field, as events record it.
    pub fn value(&self, f: Field) -> serde_json::Value {
        match f {
            Field::Kind => self.kind.as_str().into(),
            Field::Emergency => self.emergency.into(),
            Field::HardCopyServed => self.hard_copy_served.clone().into(),
            Field::UserNotice => self.user_notice.as_str().into(),
            Field::UserNoticeUntil => self.user_notice_until.clone().into(),
            Field::UserNotified => self.user_notified.clone().into(),
            Field::Deadline => self.deadline.clone().into(),
            Field::Outcome => self.outcome.map(|o| o.as_str()).into(),
        }
    }
}

/// A date setting on the command line: a date (`2026-12-01`) or RFC 3339
/// instant, or `none` to clear the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateSetting(pub Option<String>);

/// Parses a [`DateSetting`] (for clap).
pub fn parse_date_setting(s: &str) -> Result<DateSetting, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(DateSetting(None));
    }
    crate::clock::parse_date_or_instant(s)
        .map(|d| DateSetting(Some(d)))
        .ok_or_else(|| {
            format!("`{s}` is not a date such as 2026-12-01, an RFC 3339 time, or `none`")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminders_of_a_missing_hard_copy_and_an_ended_gag_order() {
        let mut c = Case {
            id: 1,
            reference: Reference {
                year: 2026,
                number: 1,
            },
            status: Status::UnderReview,
            agency: Some("Royal Gibraltar Police".into()),
            requester: Some("officer@police.gi".into()),
            authenticated: true,
            kind: RequestKind::CourtOrder,
            emergency: false,
            hard_copy_served: None,
            user_notice: UserNotice::Prohibited,
            user_notice_until: Some("2026-11-20".into()),
            user_notified: None,
            deadline: None,
            outcome: None,
            opened_at: "2026-11-02T10:00:00Z".into(),
            updated_at: "2026-11-02T10:00:00Z".into(),
        };
        let day = |d: u8| time::Date::from_calendar_date(2026, time::Month::November, d).unwrap();
        assert!(
            c.reminders(day(15), 14).is_empty(),
            "13 days, before the end"
        );
        assert_eq!(
            c.reminders(day(16), 14),
            ["hard copy not served 14 days after the request (opened 2026-11-02)"]
        );
        assert_eq!(c.reminders(day(20), 14).len(), 2);
        assert!(
            c.reminders(day(20), 14)[1].contains("ended on 2026-11-20: the user may now be told")
        );
        c.hard_copy_served = Some("2026-11-10".into());
        c.user_notice = UserNotice::Permitted;
        assert_eq!(
            c.reminders(day(20), 14),
            ["the user may be told and has not been (record it with the date they were told)"]
        );
        // Told: nothing more to remind of.
        c.user_notified = Some("2026-11-21".into());
        assert!(c.reminders(day(22), 14).is_empty());
        c.user_notice = UserNotice::Prohibited;
        assert!(c.reminders(day(22), 14).is_empty());
        c.user_notified = None;
        c.user_notice = UserNotice::Unknown;
        // An unauthenticated or finished case is not waiting for a hard copy.
        c.hard_copy_served = None;
        for (status, authenticated) in [
            (Status::Quarantined, false),
            (Status::Responded, true),
            (Status::Closed, true),
        ] {
            c.status = status;
            c.authenticated = authenticated;
            assert!(c.reminders(day(20), 14).is_empty(), "{status:?}");
        }
    }
    use Status::*;

    #[test]
    fn references() {
        let r: Reference = "LR-2026-0042".parse().unwrap();
        assert_eq!((r.year, r.number), (2026, 42));
        assert_eq!(r.to_string(), "LR-2026-0042");
        assert_eq!(
            Reference {
                year: 2026,
                number: 12345
            }
            .to_string(),
            "LR-2026-12345"
        );
        for bad in [
            "LR-2026-42",
            "LR-26-0042",
            "LR-2026-0000",
            "XX-2026-0001",
            "LR-2026-00a1",
            "",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad}");
        }
        assert_eq!(
            references_in("Re: [LR-2026-0007] order [x] [LR-2025-0100]"),
            vec![
                Reference {
                    year: 2026,
                    number: 7
                },
                Reference {
                    year: 2025,
                    number: 100
                }
            ]
        );
        let r = |n| Reference {
            year: 2026,
            number: n,
        };
        assert_eq!(references_in("LR-2026-0007 without brackets"), [r(7)]);
        assert_eq!(
            references_in("Re: lr-2026-0008 (further to [LR-2026-0007]; LR-2026-0007)"),
            [r(7), r(8)]
        );
        for not_one in [
            "XLR-2026-0007",
            "LR-2026-0007x",
            "LR-2026-007",
            "LR_2026-0007",
            "LR-2026-0000",
        ] {
            assert!(references_in(not_one).is_empty(), "{not_one}");
        }
    }

    #[test]
    fn every_transition() {
        let allowed = [
            (Received, UnderReview),
            (UnderReview, Responded),
            (UnderReview, Challenged),
            (UnderReview, Rejected),
            (Challenged, Responded),
            (Challenged, Closed),
            (Responded, Closed),
            (Rejected, Closed),
            (Quarantined, UnderReview),
            (Quarantined, Closed),
            (OutOfJurisdiction, UnderReview),
            (OutOfJurisdiction, Closed),
            (Closed, UnderReview),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                let ok = from.check_move(to, Some("why")).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from:?} → {to:?}");
            }
        }
        assert!(
            Closed
                .check_move(UnderReview, None)
                .unwrap_err()
                .contains("--note")
        );
        assert!(
            Received
                .check_move(Closed, None)
                .unwrap_err()
                .contains("under_review")
        );
    }
}
