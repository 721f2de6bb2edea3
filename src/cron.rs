//! Cron schedules: 5 fields (minute hour day-of-month month day-of-week), evaluated in a time
//! zone (UTC by default). Parsing and next-firing arithmetic come from the croner crate.

use crate::error::Error;
use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use pgrx::prelude::*;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, Error> {
    let bad = |reason: String| Error::InvalidSchedule { input: expr.to_string(), reason };
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && fields != 5 {
        return Err(bad(format!("expected 5 fields, found {fields}")));
    }
    let cron = Cron::new(expr).parse().map_err(|e| bad(e.to_string()))?;
    let tz = match tz {
        None => Tz::UTC,
        Some(name) => name.parse::<Tz>().map_err(|_| Error::InvalidSchedule {
            input: expr.to_string(),
            reason: format!("unknown time zone \"{name}\""),
        })?,
    };
    Ok(Schedule { cron, tz })
}

impl Schedule {
    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // firings are on whole minutes: drop sub-second parts so croner's one-second step
        // lands on the next second rather than between two
        let after = after.with_nanosecond(0)?.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&after, false).ok().map(|t| t.with_timezone(&Utc))
    }
}

fn to_chrono(ts: TimestampWithTimeZone) -> Option<DateTime<Utc>> {
    let pg: i64 = ts.into();
    Utc.timestamp_micros(pg.checked_add(PG_EPOCH_OFFSET_US)?).single()
}

fn from_chrono(t: DateTime<Utc>) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_OFFSET_US)
        .expect("a cron firing is within timestamptz range")
}

/// SQL: the next firing of a schedule strictly after `after`; NULL if it never fires again.
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _cron_next(expr: &str, tz: Option<&str>, after: TimestampWithTimeZone) -> Option<TimestampWithTimeZone> {
    let schedule = parse(expr, tz).unwrap_or_else(|e| e.raise());
    schedule.next_after(to_chrono(after)?).map(from_chrono)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_minute_fires_on_the_next_whole_minute() {
        let s = parse("* * * * *", None).unwrap();
        assert_eq!(s.next_after(at("2026-01-01T10:00:00Z")), Some(at("2026-01-01T10:01:00Z")));
        assert_eq!(s.next_after(at("2026-01-01T10:00:59.999Z")), Some(at("2026-01-01T10:01:00Z")));
        assert_eq!(s.next_after(at("2026-01-01T10:00:30.5Z")), Some(at("2026-01-01T10:01:00Z")));
    }

    #[test]
    fn steps_ranges_and_days_of_week() {
        let s = parse("*/15 9-17 * * 1-5", None).unwrap();
        // Friday 17:50 -> Monday 09:00
        assert_eq!(s.next_after(at("2026-01-02T17:50:00Z")), Some(at("2026-01-05T09:00:00Z")));
        let s = parse("0 0 1 * *", None).unwrap();
        assert_eq!(s.next_after(at("2026-01-15T00:00:00Z")), Some(at("2026-02-01T00:00:00Z")));
    }

    #[test]
    fn time_zones_shift_firings() {
        let s = parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        // 09:00 in Paris is 08:00 UTC in winter
        assert_eq!(s.next_after(at("2026-01-10T00:00:00Z")), Some(at("2026-01-10T08:00:00Z")));
        // and 07:00 UTC in summer
        assert_eq!(s.next_after(at("2026-07-10T00:00:00Z")), Some(at("2026-07-10T07:00:00Z")));
    }

    #[test]
    fn bad_schedules_are_refused() {
        for (expr, tz) in [
            ("* * * *", None),
            ("* * * * * *", None),
            ("61 * * * *", None),
            ("every minute", None),
            ("* * * * *", Some("Mars/Olympus")),
        ] {
            let err = parse(expr, tz).err().unwrap_or_else(|| panic!("{expr} accepted"));
            assert!(err.to_string().starts_with(&format!("invalid schedule \"{expr}\"")), "{err}");
        }
        assert!(parse("@hourly", None).is_ok());
    }
}
