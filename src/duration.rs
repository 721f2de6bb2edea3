//! Durations: humantime strings (`30s`, `1m30s`, `2h`) and PostgreSQL interval text
//! (`00:05:00`, `1 day 02:00:00`), held as microseconds.
//!
//! The SQL type `conveyor.duration` has the storage of `interval` (casts between the two are
//! binary), so a function parameter of type duration takes `'30s'`, `'00:00:30'` or an interval
//! value alike. Its input function is [`duration_in`], which quotes a bad value in its error.

use crate::error::Error;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

const US_PER_SECOND: i64 = 1_000_000;
const US_PER_MINUTE: i64 = 60 * US_PER_SECOND;
const US_PER_HOUR: i64 = 60 * US_PER_MINUTE;
const US_PER_DAY: i64 = 24 * US_PER_HOUR;
/// Anything longer is refused as absurd: a queue does not wait a century.
pub const MAX_MICROS: i64 = 100 * 365 * US_PER_DAY;

/// Parse a duration into microseconds. Accepts humantime (`30s`, `1m30s`, `1h 30m`, `2days`,
/// `500ms`) and the interval text PostgreSQL prints (`00:01:30`, `1 day 02:00:00`, `3 days`).
pub fn parse(input: &str) -> Result<i64, Error> {
    let text = input.trim();
    let bad = |reason: &str| Error::InvalidDuration { input: input.to_string(), reason: reason.to_string() };
    if text.is_empty() {
        return Err(bad("empty; expected e.g. 30s, 5m, 1h30m"));
    }
    if text.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let micros = match humantime::parse_duration(text) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => match parse_interval_text(text) {
            Some(us) => us,
            None => return Err(bad("expected e.g. 30s, 5m, 1h30m, 2d or 00:05:00")),
        },
    };
    check_range(micros).map_err(bad)
}

/// Every duration, whichever way it arrives (text, interval, options JSON), is at least 0 and at
/// most 100 years: one rule, so no path lets a negative or absurd one through.
pub fn check_range(micros: i64) -> Result<i64, &'static str> {
    if micros < 0 {
        Err("must not be negative")
    } else if micros > MAX_MICROS {
        Err("longer than 100 years")
    } else {
        Ok(micros)
    }
}

/// The interval text forms PostgreSQL prints, whatever the session's IntervalStyle:
/// `[N day[s] ][HH:MM:SS[.ffffff]]` (postgres), `@ 1 min 30 secs` (postgres_verbose) and
/// `P1DT2H3M4.5S` (iso_8601).
fn parse_interval_text(text: &str) -> Option<i64> {
    if let Some(iso) = text.strip_prefix('P') {
        return parse_iso8601(iso);
    }
    let text = text.strip_prefix('@').unwrap_or(text);
    let mut total: i64 = 0;
    let mut words = text.split_whitespace().peekable();
    let mut seen = false;
    while let Some(word) = words.next() {
        if word.contains(':') {
            total = total.checked_add(parse_clock(word)?)?;
            seen = true;
            continue;
        }
        let n: i64 = word.parse().ok()?;
        let unit = words.next()?;
        let per = match unit.trim_end_matches('s') {
            "day" => US_PER_DAY,
            "hour" => US_PER_HOUR,
            "min" | "minute" => US_PER_MINUTE,
            "sec" | "second" => US_PER_SECOND,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(per)?)?;
        seen = true;
    }
    seen.then_some(total)
}

/// The part of an ISO 8601 duration after `P`: `[nD][T[nH][nM][n[.f]S]]` (no years or months).
fn parse_iso8601(rest: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut in_time = false;
    let mut number = String::new();
    let mut seen = false;
    for c in rest.chars() {
        match c {
            'T' if !in_time && number.is_empty() => in_time = true,
            '0'..='9' | '.' => number.push(c),
            unit => {
                let per = match (unit, in_time) {
                    ('D', false) => US_PER_DAY,
                    ('W', false) => 7 * US_PER_DAY,
                    ('H', true) => US_PER_HOUR,
                    ('M', true) => US_PER_MINUTE,
                    ('S', true) => US_PER_SECOND,
                    _ => return None,
                };
                let value: f64 = number.parse().ok()?;
                total = total.checked_add((value * per as f64).round() as i64)?;
                number.clear();
                seen = true;
            }
        }
    }
    (seen && number.is_empty()).then_some(total)
}

/// `[-]HH:MM:SS[.ffffff]` or `[-]HH:MM`; a sign applies to the whole clock, as in PostgreSQL's
/// own output `1 day -00:30:00` (23:30:00).
fn parse_clock(word: &str) -> Option<i64> {
    let (sign, word) = match word.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, word.strip_prefix('+').unwrap_or(word)),
    };
    if word.starts_with(['-', '+']) {
        return None;
    }
    let parts: Vec<&str> = word.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (*h, *m, "0"),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    if !(0..60).contains(&m) {
        return None;
    }
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i64 = whole.parse().ok()?;
    if !(0..60).contains(&whole) || frac.len() > 6 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac_us: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    if h < 0 {
        return None;
    }
    let clock = h.checked_mul(US_PER_HOUR)?.checked_add(m * US_PER_MINUTE + whole * US_PER_SECOND + frac_us)?;
    Some(sign * clock)
}

/// Format microseconds the way [`parse`] reads them back: `1d 2h 3m 4s 500ms`.
pub fn format(micros: i64) -> String {
    if micros == 0 {
        return "0s".to_string();
    }
    let sign = if micros < 0 { "-" } else { "" };
    let mut rest = micros.unsigned_abs();
    let mut parts = Vec::new();
    for (per, unit) in [
        (US_PER_DAY as u64, "d"),
        (US_PER_HOUR as u64, "h"),
        (US_PER_MINUTE as u64, "m"),
        (US_PER_SECOND as u64, "s"),
        (1_000, "ms"),
        (1, "us"),
    ] {
        if rest >= per {
            parts.push(format!("{}{unit}", rest / per));
            rest %= per;
        }
    }
    format!("{sign}{}", parts.join(" "))
}

/// ISO 8601 form (`PT90.5S`) that PostgreSQL's interval input reads exactly; used to hand
/// normalized durations from Rust to SQL inside JSON.
pub fn to_iso8601(micros: i64) -> String {
    let secs = micros / US_PER_SECOND;
    let frac = (micros % US_PER_SECOND).abs();
    if frac == 0 {
        format!("PT{secs}S")
    } else {
        format!("PT{secs}.{frac:06}S")
    }
}

fn interval_micros(i: &Interval) -> i64 {
    i64::try_from(i.as_micros()).unwrap_or(i64::MAX)
}

// ---- SQL-facing functions: declared in sql/types.sql (sql = false keeps pgrx from declaring
// them with the wrong types; the storage of conveyor.duration is that of interval).

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn duration_in(input: &CStr) -> Interval {
    let text = input.to_string_lossy();
    match parse(&text) {
        Ok(us) => Interval::from_micros(us),
        Err(e) => e.raise(),
    }
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn duration_out(value: Interval) -> CString {
    let mut text = String::new();
    if value.months() != 0 {
        text.push_str(&format!("{}months ", value.months()));
    }
    let rest = value.days() as i64 * US_PER_DAY + value.micros();
    if rest != 0 || text.is_empty() {
        text.push_str(&format(rest));
    }
    CString::new(text.trim_end()).expect("a formatted duration has no NUL byte")
}

/// SQL: the cast from interval to conveyor.duration, with the rule every duration follows (an
/// interval argument used to bypass it: the cast was binary).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn duration_from_interval(value: Interval) -> Interval {
    // a month has no fixed length ('1 month -30 days' is 0 by pgrx's 30-day month and negative
    // from 31 January): durations are days and smaller
    if value.months() != 0 {
        let reason = "months have no fixed length: give days (30d) instead".to_string();
        Error::InvalidDuration { input: format!("{} months ...", value.months()), reason }.raise();
    }
    let micros = interval_micros(&value);
    match check_range(micros) {
        Ok(_) => value,
        Err(reason) => Error::InvalidDuration { input: format(micros), reason: reason.to_string() }.raise(),
    }
}

/// SQL: conveyor.duration's binary input. Reads an interval's wire form (as interval_recv
/// does: microseconds, days, months), holds it to the rule every duration follows (0 to 100
/// years, no months) and stores it as text input does: all in microseconds, days 0 (a day field
/// would follow the session's time zone across a DST change in `now() + lease`).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn duration_recv(buf: pgrx::datum::Internal) -> Interval {
    let buf = buf.unwrap().expect("strict: the buffer is not null").cast_mut_ptr::<pg_sys::StringInfoData>();
    // SAFETY: PostgreSQL calls a type's receive function with a StringInfo holding the value;
    // pq_getmsgint64 and pq_getmsgint raise an ERROR (not UB) when the message is too short
    let (micros, days, months) = unsafe {
        (pg_sys::pq_getmsgint64(buf), pg_sys::pq_getmsgint(buf, 4) as i32, pg_sys::pq_getmsgint(buf, 4) as i32)
    };
    let input = format!("{months} months {days} days {micros} us");
    if months != 0 {
        let reason = "months have no fixed length: give days (30d) instead".to_string();
        Error::InvalidDuration { input, reason }.raise();
    }
    let total = micros as i128 + days as i128 * US_PER_DAY as i128;
    let checked =
        i64::try_from(total).map_err(|_| if total < 0 { "must not be negative" } else { "longer than 100 years" });
    match checked.and_then(check_range) {
        Ok(us) => Interval::from_micros(us),
        Err(reason) => Error::InvalidDuration { input, reason: reason.to_string() }.raise(),
    }
}

/// Parse text a worker sent (a release delay): NULL instead of an error when it is not a
/// duration, so the caller can fail the attempt with `configuration_invalid`.
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _duration_or_null(input: &str) -> Option<Interval> {
    parse(input).ok().map(Interval::from_micros)
}

/// Format an interval as a duration string (for events and views).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _duration_text(value: Interval) -> String {
    format(interval_micros(&value))
}

#[cfg(test)]
mod unit {
    use super::*;

    const S: i64 = US_PER_SECOND;

    #[test]
    fn negative_durations_are_refused_whatever_their_spelling() {
        for text in ["-1s", "@ -1 hour", "1 sec -2 sec", "0 days -2000000000:00:00", "-00:00:01", "P-1D"] {
            assert!(parse(text).is_err(), "{text} was accepted");
        }
        assert_eq!(parse("@ -1 hour").unwrap_err().to_string(), "invalid duration \"@ -1 hour\": must not be negative");
    }

    #[test]
    fn a_signed_clock_is_signed_as_a_whole() {
        // PostgreSQL prints 23:30:00 as "1 day -00:30:00" when days and time have other signs
        assert_eq!(parse("1 day -00:30:00"), Ok(23 * 3600 * S + 30 * 60 * S));
        assert_eq!(parse("1 day +00:30:00"), Ok(24 * 3600 * S + 30 * 60 * S));
        assert!(parse("1 day --00:30:00").is_err());
        assert_eq!(check_range(-1), Err("must not be negative"));
        assert_eq!(check_range(MAX_MICROS + 1), Err("longer than 100 years"));
    }

    #[test]
    fn humantime_strings_parse() {
        for (text, want) in [
            ("30s", 30 * S),
            ("1m30s", 90 * S),
            ("1m 30s", 90 * S),
            ("2h", 2 * 3600 * S),
            ("1h30m", 5400 * S),
            ("500ms", 500_000),
            ("2days", 2 * 86400 * S),
            ("1d", 86400 * S),
            ("0s", 0),
            ("  5m  ", 300 * S),
            ("5min", 300 * S),
            ("10 seconds", 10 * S),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn interval_text_parses() {
        for (text, want) in [
            ("00:00:30", 30 * S),
            ("00:01:30.5", 90 * S + 500_000),
            ("1 day 02:00:00", 26 * 3600 * S),
            ("3 days", 3 * 86400 * S),
            ("1 day", 86400 * S),
            ("01:00", 3600 * S),
            ("2 hours", 7200 * S),
            ("@ 1 min 30 secs", 90 * S),
            ("@ 2 days 3 hours", (2 * 24 + 3) * 3600 * S),
            ("PT90S", 90 * S),
            ("PT1.500000S", 1_500_000),
            ("P1DT2H", 26 * 3600 * S),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_value_quoted() {
        for text in
            ["5 minits", "", "30", "abc", "-5s", "1:99:00", "200years", "1 fortnight", "P1Y", "PT", "@ 3 mins ago"]
        {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(&format!("\"{text}\"")), "{err}");
        }
        assert_eq!(
            parse("5 minits").unwrap_err().to_string(),
            "invalid duration \"5 minits\": expected e.g. 30s, 5m, 1h30m, 2d or 00:05:00"
        );
        assert!(parse("-5s").unwrap_err().to_string().contains("must not be negative"));
    }

    #[test]
    fn format_round_trips() {
        for us in [0, 1, 999, 1_000, 30 * S, 90 * S, 3600 * S + 1, 86400 * S * 3 + 5 * S + 250_000] {
            let text = format(us);
            assert_eq!(parse(&text), Ok(us), "{text}");
        }
        assert_eq!(format(90 * S), "1m 30s");
        assert_eq!(format(26 * 3600 * S), "1d 2h");
        assert_eq!(format(1_500), "1ms 500us");
    }

    #[test]
    fn iso8601_form() {
        assert_eq!(to_iso8601(90 * S), "PT90S");
        assert_eq!(to_iso8601(1_500_000), "PT1.500000S");
    }
}
