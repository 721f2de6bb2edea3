//! ULIDs: 48 bits of milliseconds since the Unix epoch, then 80 bits: the first 10 are the
//! logical partition of the server that made the id (`conveyor.partition`, 0 by default;
//! docs/scale-out.md), the other 70 random; 16 bytes stored, shown as 26 characters of Crockford
//! base32. A router finds the shard of any run id from the id alone.
//!
//! The SQL type `conveyor.ulid` has the storage of `uuid` and borrows uuid's comparison, hash
//! and binary I/O functions (sql/types.sql); only the text I/O and generation live here.
//! Bytes are big-endian, so byte order is time order and the btree sorts runs by creation.

use crate::error::Error;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::{CStr, CString};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

pub fn encode(bytes: [u8; 16]) -> String {
    let mut value = u128::from_be_bytes(bytes);
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("the alphabet is ASCII")
}

fn decode_char(c: u8) -> Option<u8> {
    // Crockford: case-insensitive; I and L read as 1, O as 0; U is not used.
    let c = c.to_ascii_uppercase();
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'O' => Some(0),
        b'I' | b'L' => Some(1),
        _ => ALPHABET.iter().position(|&a| a == c).map(|p| p as u8),
    }
}

pub fn decode(text: &str) -> Result<[u8; 16], Error> {
    let bad = || Error::InvalidUlid { input: text.to_string() };
    let raw = text.as_bytes();
    if raw.len() != 26 {
        return Err(bad());
    }
    let mut value: u128 = 0;
    for (i, &c) in raw.iter().enumerate() {
        let digit = decode_char(c).ok_or_else(bad)? as u128;
        // the first character carries only 3 bits (26 * 5 = 130 > 128)
        if i == 0 && digit > 7 {
            return Err(bad());
        }
        value = (value << 5) | digit;
    }
    Ok(value.to_be_bytes())
}

thread_local! {
    /// The last ULID made by this backend, so ids made in the same millisecond still increase.
    static LAST: Cell<(u64, u128)> = const { Cell::new((0, 0)) };
}

/// Logical partitions an id can name: 10 bits. Shards hold whole partitions, so a cluster grows
/// by moving partitions (docs/scale-out.md); 1,024 leaves room far past any cluster we can run.
pub const PARTITIONS: u16 = 1024;
const PARTITION_SHIFT: u32 = 70;
const RANDOM_MASK: u128 = (1u128 << PARTITION_SHIFT) - 1;

/// A new ULID in a logical partition, monotonic within this process: in the same millisecond
/// the random part is incremented, so a batch of runs enqueued together keeps its order.
pub fn generate(now_ms: u64, partition: u16) -> [u8; 16] {
    debug_assert!(partition < PARTITIONS);
    let (last_ms, last_random) = LAST.with(|c| c.get());
    let random = if now_ms <= last_ms && last_random < RANDOM_MASK {
        last_random + 1
    } else {
        rand::random::<u128>() & RANDOM_MASK
    };
    let ms = now_ms.max(last_ms) & ((1u64 << 48) - 1);
    LAST.with(|c| c.set((ms, random)));
    (((ms as u128) << 80) | ((partition as u128) << PARTITION_SHIFT) | random).to_be_bytes()
}

/// The logical partition an id was made in.
pub fn partition(bytes: [u8; 16]) -> u16 {
    ((u128::from_be_bytes(bytes) >> PARTITION_SHIFT) as u16) & (PARTITIONS - 1)
}

pub fn timestamp_ms(bytes: [u8; 16]) -> u64 {
    (u128::from_be_bytes(bytes) >> 80) as u64
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// ---- SQL-facing functions, declared in sql/types.sql with the type conveyor.ulid
// (same storage as uuid, hence pgrx's Uuid here).

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn ulid_in(input: &CStr) -> pgrx::Uuid {
    match decode(&input.to_string_lossy()) {
        Ok(bytes) => pgrx::Uuid::from_bytes(bytes),
        Err(e) => e.raise(),
    }
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn ulid_out(value: pgrx::Uuid) -> CString {
    CString::new(encode(*value.as_bytes())).expect("base32 has no NUL byte")
}

#[pg_extern(volatile, parallel_safe, sql = false)]
fn ulid_generate() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(generate(wall_clock_ms(), crate::guc::partition()))
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn ulid_partition(value: pgrx::Uuid) -> i32 {
    partition(*value.as_bytes()) as i32
}

/// Text to ULID, or NULL when the text is not one (for batch input parsed from JSON).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _ulid_or_null(input: &str) -> Option<pgrx::Uuid> {
    decode(input).ok().map(pgrx::Uuid::from_bytes)
}

/// Text to UUID (32 hex digits, hyphens anywhere), or NULL: lease tokens parsed from JSON.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut digits = text.bytes().filter(|&b| b != b'-');
    for byte in out.iter_mut() {
        let hi = (digits.next()? as char).to_digit(16)?;
        let lo = (digits.next()? as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    digits.next().is_none().then_some(out)
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _uuid_or_null(input: &str) -> Option<pgrx::Uuid> {
    parse_uuid(input).map(pgrx::Uuid::from_bytes)
}

#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn ulid_timestamp(value: pgrx::Uuid) -> TimestampWithTimeZone {
    let ms = timestamp_ms(*value.as_bytes()) as f64;
    pgrx::datetime::to_timestamp(ms / 1000.0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for bytes in [[0u8; 16], [0xff; 16], generate(1_700_000_000_000, 0)] {
            let text = encode(bytes);
            assert_eq!(text.len(), 26);
            assert_eq!(decode(&text), Ok(bytes));
            assert_eq!(decode(&text.to_lowercase()), Ok(bytes));
        }
        assert_eq!(encode([0xff; 16]), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn known_value_from_the_spec() {
        // The ULID spec's example: 01ARZ3NDEKTSV4RRFFQ69G5FAV has timestamp 1469922850259.
        let bytes = decode("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        assert_eq!(timestamp_ms(bytes), 1_469_922_850_259);
    }

    #[test]
    fn bad_text_is_refused() {
        for text in [
            "",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
        assert_eq!(decode("nope").unwrap_err().to_string(), "invalid ulid \"nope\"");
    }

    #[test]
    fn uuids_parse_with_or_without_hyphens() {
        let want = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(parse_uuid("12345678-9abc-def0-1234-56789abcdef0"), Some(want));
        assert_eq!(parse_uuid("123456789ABCDEF0123456789ABCDEF0"), Some(want));
        for bad in ["", "1234", "12345678-9abc-def0-1234-56789abcdef0ff", "g2345678-9abc-def0-1234-56789abcdef0"] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_made_in_one_millisecond_increase() {
        let a = generate(1_700_000_000_000, 5);
        let b = generate(1_700_000_000_000, 5);
        let c = generate(1_699_999_999_999, 5); // the clock stepped back: still increasing
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
        assert_eq!(timestamp_ms(a), 1_700_000_000_000);
        let d = generate(1_700_000_000_001, 5);
        assert!(c < d);
    }

    #[test]
    fn ids_carry_their_partition() {
        for p in [0, 1, 511, 1023] {
            for _ in 0..100 {
                let id = generate(1_700_000_000_000, p);
                assert_eq!(partition(id), p);
                assert_eq!(timestamp_ms(id), 1_700_000_000_000);
            }
        }
        // the partition sits below the timestamp: ids still sort by time first
        assert!(generate(1_700_000_000_000, 1023) < generate(1_700_000_000_001, 0));
    }
}
