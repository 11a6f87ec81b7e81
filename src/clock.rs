//! Time as the case log records it: RFC 3339 in UTC to the whole second
//! (`2026-11-02T10:00:00Z`), and the clock that supplies it.
//!
//! Every stored time has the same fixed-width form, so SQLite can compare
//! and sort them as text ("replies in the last 24 hours" is a string
//! comparison on an index). The clock is a value passed down from `main`,
//! never read from inside the pure core, so tests can pin it.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// The one stored form of an instant.
const STAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// The stored form of a calendar date.
pub const DAY: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system clock.
    System,
    /// A fixed instant (tests, replays).
    Fixed(OffsetDateTime),
}

impl Clock {
    /// The current instant in UTC, cut to the whole second.
    pub fn now(&self) -> OffsetDateTime {
        let t = match self {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Fixed(t) => *t,
        };
        t.to_offset(UtcOffset::UTC)
            .replace_nanosecond(0)
            .expect("zero nanoseconds is always valid")
    }
}

/// Formats an instant in the stored form.
pub fn stamp(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(STAMP)
        .expect("a UTC instant in years 0..=9999 always formats")
}

/// Formats a calendar date in the stored form (`2026-11-02`).
pub fn day(d: Date) -> String {
    d.format(DAY).expect("a date always formats")
}

/// Parses an RFC 3339 instant (any offset, any precision).
pub fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()
}

/// A date or instant given on the command line: `2026-11-02` stays a date,
/// an RFC 3339 instant is kept to the second in UTC.
pub fn parse_date_or_instant(s: &str) -> Option<String> {
    let s = s.trim();
    if let Ok(d) = Date::parse(s, DAY) {
        return Some(day(d));
    }
    // The stored form has no fraction of a second: formatting drops it.
    parse_instant(s).map(stamp)
}

/// The wait after `failures` failures in a row (1 for the first): `min`,
/// twice as long after each further one, at most `max`. The one backoff
/// of the product: IMAP reconnections and reply retries.
pub fn backoff(
    failures: u32,
    min: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    let doublings = failures.saturating_sub(1).min(16);
    min.saturating_mul(1 << doublings).min(max)
}

/// The machine's local date and hour at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub date: time::Date,
    pub hour: u8,
    /// The zone's IANA name (`Europe/Gibraltar`), or its offset when it
    /// has none (a POSIX `TZ` rule).
    pub zone: String,
}

/// The local date and hour at `now` in the machine's time zone: `TZ`
/// when set, else `/etc/localtime` (jiff reads both itself, so this is
/// safe in a multi-threaded process). A zone that cannot be determined is
/// taken as UTC, with a warning.
pub fn local(now: OffsetDateTime) -> anyhow::Result<Local> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let tz = jiff::tz::TimeZone::try_system().unwrap_or_else(|e| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot tell the local time zone; the digest hour is taken in UTC");
        }
        jiff::tz::TimeZone::UTC
    });
    let zoned = jiff::Timestamp::from_second(now.unix_timestamp())?.to_zoned(tz);
    let d = zoned.date();
    let date = time::Date::from_calendar_date(
        i32::from(d.year()),
        time::Month::try_from(u8::try_from(d.month())?)?,
        u8::try_from(d.day())?,
    )?;
    let zone = match zoned.time_zone().iana_name() {
        Some(name) => name.to_string(),
        None => format!("UTC{}", zoned.offset()),
    };
    Ok(Local {
        date,
        hour: u8::try_from(zoned.hour())?,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        use std::time::Duration;
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let waits: Vec<u64> = (0..12).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }

    #[test]
    fn stamps_are_fixed_width_utc() {
        let t = parse_instant("2026-11-02T12:00:00.75+02:00").unwrap();
        assert_eq!(stamp(Clock::Fixed(t).now()), "2026-11-02T10:00:00Z");
    }

    #[test]
    fn command_line_dates() {
        assert_eq!(
            parse_date_or_instant("2026-12-01").as_deref(),
            Some("2026-12-01")
        );
        assert_eq!(
            parse_date_or_instant("2026-12-01T09:30:00+01:00").as_deref(),
            Some("2026-12-01T08:30:00Z")
        );
        assert_eq!(parse_date_or_instant("2026-13-01"), None);
        assert_eq!(parse_date_or_instant("tomorrow"), None);
    }
}
