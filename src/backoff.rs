//! Retry and restart curves, and jitter.
//!
//! N is the retry number: the first retry has N = 1. constant: delay; linear: delay × N;
//! exponential: delay × 2^(N-1); custom: the Nth entry of a list, the last repeating.
//! `max_delay` caps the result when given (the SQL side passes the default cap for the
//! computed curves and only an explicitly given cap for custom lists).

use pgrx::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub enum Curve {
    Constant,
    Linear,
    Exponential,
    Custom(Vec<i64>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    None,
    /// uniform in 0..d
    Full,
    /// d/2 + uniform in 0..d/2
    Equal,
}

impl Curve {
    pub fn from_name(name: &str, custom: Vec<i64>) -> Option<Curve> {
        match name {
            "constant" => Some(Curve::Constant),
            "linear" => Some(Curve::Linear),
            "exponential" => Some(Curve::Exponential),
            "custom" if !custom.is_empty() => Some(Curve::Custom(custom)),
            _ => None,
        }
    }
}

impl Jitter {
    pub fn from_name(name: &str) -> Option<Jitter> {
        match name {
            "none" => Some(Jitter::None),
            "full" => Some(Jitter::Full),
            "equal" => Some(Jitter::Equal),
            _ => None,
        }
    }
}

/// The delay before retry `n` (1-based) in microseconds, before jitter.
pub fn delay(curve: &Curve, base: i64, max_delay: Option<i64>, n: u32) -> i64 {
    let n = n.max(1);
    let raw = match curve {
        Curve::Constant => base,
        Curve::Linear => base.saturating_mul(n as i64),
        Curve::Exponential => {
            let factor = 1i64.checked_shl(n - 1).filter(|f| *f > 0).unwrap_or(i64::MAX);
            base.saturating_mul(factor)
        }
        Curve::Custom(list) => list[(n as usize - 1).min(list.len() - 1)],
    };
    match max_delay {
        Some(cap) => raw.min(cap),
        None => raw,
    }
}

/// Apply jitter to a delay; `unit` is a uniform random number in [0, 1). A jittered delay is
/// rounded down to whole milliseconds (microseconds of noise help nobody reading it).
pub fn jitter(d: i64, kind: Jitter, unit: f64) -> i64 {
    let ms = |us: i64| us - us % 1000;
    match kind {
        Jitter::None => d,
        Jitter::Full => ms((d as f64 * unit) as i64),
        Jitter::Equal => ms(d / 2 + ((d / 2) as f64 * unit) as i64).max(d / 2),
    }
}

fn micros(i: &Interval) -> i64 {
    i64::try_from(i.as_micros()).unwrap_or(i64::MAX)
}

/// SQL: the delay chosen for retry `n` of a policy. Refuses names it does not know (the
/// configuration is validated before it is stored, so that is a bug, not bad input).
#[pg_extern(volatile, parallel_safe, sql = false)]
fn _backoff_delay(
    backoff: &str,
    base: Interval,
    max_delay: Option<Interval>,
    custom: Option<Vec<Option<Interval>>>,
    jitter_kind: &str,
    n: i32,
) -> Interval {
    let list: Vec<i64> = custom.unwrap_or_default().iter().flatten().map(micros).collect();
    let curve = Curve::from_name(backoff, list).unwrap_or_else(|| panic!("stored backoff {backoff:?} is not a curve"));
    let kind =
        Jitter::from_name(jitter_kind).unwrap_or_else(|| panic!("stored jitter {jitter_kind:?} is not a jitter kind"));
    let d = delay(&curve, micros(&base), max_delay.as_ref().map(micros), n.max(1) as u32);
    Interval::from_micros(jitter(d, kind, rand::random::<f64>()))
}

#[cfg(test)]
mod unit {
    use super::*;

    const S: i64 = 1_000_000;

    fn series(curve: Curve, base: i64, cap: Option<i64>, count: u32) -> Vec<i64> {
        (1..=count).map(|n| delay(&curve, base, cap, n) / S).collect()
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        assert_eq!(series(Curve::Exponential, 10 * S, Some(300 * S), 7), vec![10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn linear_grows_by_the_delay() {
        assert_eq!(series(Curve::Linear, 10 * S, Some(300 * S), 4), vec![10, 20, 30, 40]);
    }

    #[test]
    fn constant_stays() {
        assert_eq!(series(Curve::Constant, 5 * S, Some(300 * S), 3), vec![5, 5, 5]);
    }

    #[test]
    fn custom_list_repeats_its_last_entry_and_is_uncapped_by_default() {
        let list = vec![30 * S, 76 * S, 152 * S, 308 * S];
        assert_eq!(series(Curve::Custom(list.clone()), 0, None, 6), vec![30, 76, 152, 308, 308, 308]);
        assert_eq!(series(Curve::Custom(list), 0, Some(120 * S), 4), vec![30, 76, 120, 120]);
    }

    #[test]
    fn huge_retry_numbers_saturate_instead_of_overflowing() {
        assert_eq!(delay(&Curve::Exponential, 10 * S, Some(300 * S), 200), 300 * S);
        assert_eq!(delay(&Curve::Exponential, 10 * S, None, 64), i64::MAX);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let d = 100 * S;
        assert_eq!(jitter(d, Jitter::None, 0.7), d);
        assert_eq!(jitter(d, Jitter::Full, 0.0), 0);
        assert_eq!(jitter(d, Jitter::Full, 0.5), 50 * S);
        assert_eq!(jitter(d, Jitter::Equal, 0.0), 50 * S);
        assert_eq!(jitter(d, Jitter::Equal, 0.999_999), 50 * S + 49_999_000);
        assert_eq!(jitter(1_500_000, Jitter::Full, 0.123_456_7) % 1000, 0, "whole milliseconds");
        for i in 0..100 {
            let u = i as f64 / 100.0;
            assert!((0..d).contains(&jitter(d, Jitter::Full, u)));
            assert!((d / 2..d).contains(&jitter(d, Jitter::Equal, u)));
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(Curve::from_name("custom", vec![]), None);
        assert_eq!(Curve::from_name("expo", vec![]), None);
        assert_eq!(Jitter::from_name("equal"), Some(Jitter::Equal));
    }
}
