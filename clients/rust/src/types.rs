//! pg_conveyor's SQL types as Rust values, with `FromSql`/`ToSql`, so that no `::text` cast is
//! needed: [`Ulid`] (`conveyor.ulid`), [`Duration`] (`conveyor.duration`) and [`RunStatus`]
//! (`conveyor.run_status`).

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn is_conveyor(ty: &Type, name: &str) -> bool {
    ty.name() == name && ty.schema() == "conveyor"
}

/// A run, attempt or message id: 128 bits (48-bit milliseconds, 80 random bits), shown as 26
/// characters of Crockford base32. On the wire it is 16 bytes, as a uuid: it reads and binds
/// `conveyor.ulid` and `uuid` alike (`id::uuid`, `$1::conveyor.ulid`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ulid(pub u128);

impl Ulid {
    /// The milliseconds since the Unix epoch it was made at.
    pub fn timestamp_ms(&self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl fmt::Display for Ulid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as i32; // the first character holds the top 3 bits
            let bits = if shift >= 0 { self.0 >> shift } else { self.0 << -shift };
            *c = CROCKFORD[(bits & 0x1f) as usize];
        }
        f.write_str(std::str::from_utf8(&out).expect("ascii"))
    }
}

impl fmt::Debug for Ulid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ulid({self})")
    }
}

/// Why a text is not a ULID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUlid(pub String);

impl fmt::Display for InvalidUlid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid ulid \"{}\": expected 26 characters of Crockford base32", self.0)
    }
}

impl StdError for InvalidUlid {}

impl FromStr for Ulid {
    type Err = InvalidUlid;

    /// 26 characters of Crockford base32, in either case (I and L read as 1, O as 0); the first
    /// at most 7 (128 bits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidUlid(s.to_string());
        if s.len() != 26 {
            return Err(bad());
        }
        let mut value: u128 = 0;
        for (i, c) in s.bytes().enumerate() {
            // Crockford, as the server reads it: either case; I and L read as 1, O as 0
            let digit = match c.to_ascii_uppercase() {
                b'O' => 0,
                b'I' | b'L' => 1,
                c => CROCKFORD.iter().position(|&d| d == c).ok_or_else(bad)? as u128,
            };
            if i == 0 && digit > 7 {
                return Err(bad());
            }
            value = (value << 5) | digit;
        }
        Ok(Ulid(value))
    }
}

impl<'a> FromSql<'a> for Ulid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bytes: [u8; 16] = raw.try_into().map_err(|_| format!("a ulid is 16 bytes, got {}", raw.len()))?;
        Ok(Ulid(u128::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "ulid") || *ty == Type::UUID
    }
}

impl ToSql for Ulid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "ulid") || *ty == Type::UUID
    }

    to_sql_checked!();
}

/// A duration as pg_conveyor keeps it (`conveyor.duration`): from 0 to 100 years, to the
/// microsecond. On the wire it is an interval: it reads and binds `conveyor.duration` and
/// `interval` alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// The longest duration pg_conveyor takes.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

impl Duration {
    /// Refuses what the server would refuse: more than 100 years.
    pub fn new(d: std::time::Duration) -> Result<Self, String> {
        if d > MAX_DURATION {
            return Err(format!("invalid duration {d:?}: longer than 100 years"));
        }
        Ok(Duration(d))
    }

    pub fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s).min(MAX_DURATION))
    }

    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms).min(MAX_DURATION))
    }

    pub fn get(&self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl TryFrom<std::time::Duration> for Duration {
    type Error = String;

    fn try_from(d: std::time::Duration) -> Result<Self, String> {
        Duration::new(d)
    }
}

impl<'a> FromSql<'a> for Duration {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        // interval's binary form: microseconds (i64), days (i32), months (i32, 30 days each)
        if raw.len() != 16 {
            return Err(format!("an interval is 16 bytes, got {}", raw.len()).into());
        }
        let micros = i64::from_be_bytes(raw[0..8].try_into()?) as i128;
        let days = i32::from_be_bytes(raw[8..12].try_into()?) as i128;
        let months = i32::from_be_bytes(raw[12..16].try_into()?) as i128;
        // i128: no field combination overflows
        let total = micros + (days + months * 30) * 86_400_000_000;
        let total = u64::try_from(total).map_err(|_| {
            if total < 0 {
                format!("a negative duration: {total} microseconds")
            } else {
                "longer than 100 years".into()
            }
        })?;
        Ok(Duration::new(std::time::Duration::from_micros(total))?)
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "duration") || *ty == Type::INTERVAL
    }
}

impl ToSql for Duration {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(i64::try_from(self.0.as_micros())?);
        out.put_i32(0);
        out.put_i32(0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "duration") || *ty == Type::INTERVAL
    }

    to_sql_checked!();
}

/// A run's status (`conveyor.run_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Scheduled,
    Queued,
    Running,
    Retrying,
    Released,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Scheduled,
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Retrying,
        RunStatus::Released,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Skipped,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Scheduled => "scheduled",
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Retrying => "retrying",
            RunStatus::Released => "released",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown run status \"{s}\""))
    }
}

impl<'a> FromSql<'a> for RunStatus {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        // an enum's binary form is its label
        Ok(std::str::from_utf8(raw)?.parse()?)
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "run_status")
    }
}

impl ToSql for RunStatus {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(self.as_str().as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        is_conveyor(ty, "run_status")
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_text_round_trips_and_orders_like_its_bits() {
        for v in [0u128, 1, u128::MAX, 0x0180_0000_0000_0000_0000_0000_0000_0001, 42 << 80] {
            let text = Ulid(v).to_string();
            assert_eq!(text.len(), 26);
            assert_eq!(text.parse::<Ulid>().unwrap(), Ulid(v), "{text}");
            assert_eq!(text.to_ascii_lowercase().parse::<Ulid>().unwrap(), Ulid(v));
        }
        assert_eq!(Ulid(u128::MAX).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!(Ulid(0).to_string(), "00000000000000000000000000");
        assert!(Ulid(1).to_string() < Ulid(2 << 80).to_string());
        assert_eq!(Ulid(42 << 80).timestamp_ms(), 42);
    }

    #[test]
    fn crockford_aliases_read_as_the_server_reads_them() {
        let canonical: Ulid = "01ARZ3NDEKTSV4RRFFQ69G5FA1".parse().unwrap();
        assert_eq!("O1ARZ3NDEKTSV4RRFFQ69G5FAI".parse::<Ulid>().unwrap(), canonical);
        assert_eq!("01arz3ndektsv4rrffq69g5fal".parse::<Ulid>().unwrap(), canonical);
    }

    #[test]
    fn huge_intervals_are_refused_not_wrapped() {
        let raw: Vec<u8> =
            i64::MAX.to_be_bytes().into_iter().chain(i32::MAX.to_be_bytes()).chain(i32::MAX.to_be_bytes()).collect();
        assert!(Duration::from_sql(&Type::INTERVAL, &raw).is_err());
    }

    #[test]
    fn bad_ulid_text_is_refused() {
        for bad in ["", "0000000000000000000000000", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0000000000000000000000000U"] {
            assert_eq!(bad.parse::<Ulid>(), Err(InvalidUlid(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn durations_are_wire_intervals_within_100_years() {
        let mut buf = BytesMut::new();
        Duration::from_millis(1500).to_sql(&Type::INTERVAL, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 0, 0, 0x16, 0xe3, 0x60, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Duration::from_sql(&Type::INTERVAL, &buf).unwrap(), Duration::from_millis(1500));
        // 1 day 2 months 3 microseconds
        let raw = [0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2];
        let expect = std::time::Duration::from_micros(3 + 61 * 86_400_000_000);
        assert_eq!(Duration::from_sql(&Type::INTERVAL, &raw).unwrap().get(), expect);
        let negative = (-1i64).to_be_bytes().into_iter().chain([0; 8]).collect::<Vec<u8>>();
        assert!(Duration::from_sql(&Type::INTERVAL, &negative).is_err());
        assert!(Duration::new(MAX_DURATION + std::time::Duration::from_secs(1)).is_err());
    }

    #[test]
    fn run_statuses_are_their_labels() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
        }
        assert!("done".parse::<RunStatus>().is_err());
    }
}
